"""LN tuning (Zhao et al., 2024): train only (copies of) the normalisation layers' scales and shifts.

``config.py``: LNTuningConfig, its defaults and peft file fields; ``copies.py``: the host holding one
trained copy of a norm per adapter; ``apply.py``: adding an adapter. Files are peft's "LN_TUNING" files.
"""

from ...core.method import Method, register
from .apply import apply_ln_tuning
from .config import LNTuningConfig
from .copies import NormCopies


@register
class LNTuning(Method):
    name = "ln_tuning"
    config = LNTuningConfig
    peft_type = "LN_TUNING"

    def apply(self, model, config: LNTuningConfig, name: str) -> None:
        apply_ln_tuning(model, config, name)


__all__ = ["LNTuningConfig", "NormCopies", "apply_ln_tuning"]
