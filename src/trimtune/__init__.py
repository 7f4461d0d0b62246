"""trimtune: prune (trim) and parameter-efficiently fine-tune (tune) PyTorch and Hugging Face models."""

from . import api as _api
from .api import *  # noqa: F403  (the public verbs and configs; see api/__init__.py)

__version__ = "0.1.0"
__all__ = list(_api.__all__)
