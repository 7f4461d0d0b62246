"""VeRA (Kopiczko et al., 2024): frozen random matrices shared by every layer, trained scaling vectors.

``config.py``: VeraConfig and its peft file fields; ``delta.py``: the per-layer delta and the
model-level module holding the shared matrices; ``apply.py``: adding an adapter. Files are peft's
"VERA" files (the shared matrices under ``base_model.vera_A`` / ``vera_B`` when ``save_projection``).
"""

from ...core.registry import Method, register
from .apply import apply_vera
from .config import VeraConfig
from .delta import VeraDelta, VeraProjections

register(Method("vera", VeraConfig, apply=apply_vera, peft_type="VERA"))

__all__ = ["VeraConfig", "VeraDelta", "VeraProjections", "apply_vera"]
