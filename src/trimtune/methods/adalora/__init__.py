"""AdaLoRA (Zhang et al., 2023): SVD-form low-rank deltas whose ranks a budget schedule prunes."""

from ...core.registry import Method, register
from .apply import apply_adalora
from .budget import adalora_ranks, adalora_update
from .delta import AdaLoraConfig, AdaLoraDelta


def _run_files(model, name, config) -> dict:
    return {"adalora_ranks.json": adalora_ranks(model, name)}


register(Method("adalora", AdaLoraConfig, apply=apply_adalora, peft_type="ADALORA", run_files=_run_files))

__all__ = ["AdaLoraConfig", "AdaLoraDelta", "adalora_ranks", "adalora_update"]
