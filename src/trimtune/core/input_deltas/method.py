"""What the input-delta methods (prompt tuning, P-tuning, prefix tuning) share as methods: their
peft files (``peft_files.py``) and that their change is an input, not a weight, so it cannot merge."""

from __future__ import annotations

from ..method import Method
from .peft_files import load_prompt_adapter, save_prompt_adapter


class InputDeltaMethod(Method):
    mergeable = False

    def save(self, model, path, name):
        return save_prompt_adapter(model, path, name)

    def load(self, model, path, name, check_base=True, activate=True):
        return load_prompt_adapter(model, path, name, check_base=check_base, activate=activate)
