"""Files: atomic writes, base fingerprints, and PEFT-compatible adapter directories."""

from .adapter_files import load_adapter, save_adapter
from .fingerprint import BaseMismatchError, check_fingerprint, fingerprint
from .peft_format import FormatError

__all__ = ["BaseMismatchError", "FormatError", "check_fingerprint", "fingerprint", "load_adapter", "save_adapter"]
