"""VeRA (Kopiczko et al., 2024): frozen random matrices shared by every layer, trained scaling vectors.

``config.py``: VeraConfig and its peft file fields; ``delta.py``: the per-layer delta and the
model-level module holding the shared matrices; ``apply.py``: adding an adapter. Files are peft's
"VERA" files (the shared matrices under ``base_model.vera_A`` / ``vera_B`` when ``save_projection``).
"""

from ...core.method import Method, register
from .apply import apply_vera
from .config import VeraConfig
from .delta import VeraDelta, VeraProjections


@register
class Vera(Method):
    name = "vera"
    config = VeraConfig
    peft_type = "VERA"

    def apply(self, model, config: VeraConfig, name: str) -> None:
        apply_vera(model, config, name)  # the shared matrices first, then a delta per target


__all__ = ["VeraConfig", "VeraDelta", "VeraProjections", "apply_vera"]
