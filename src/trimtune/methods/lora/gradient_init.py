"""LoRA-GA (Wang et al., 2024): start the factors so the first step follows full fine-tuning's gradient.

The mean gradient G of each target weight over the calibration batches (``init_batches``, the model's
own loss, in training mode as peft does) is split by a randomised SVD (4r components, 4 iterations):
A takes r right singular vectors and B r left ones scaled by their singular values, from disjoint
halves of the top 2r (``lora_ga_direction``: "ArB2r" A the first r and B the next r, "A2rBr" the
reverse, "ArBr" alternating), so that one LoRA step moves ``s·B A`` along G's top directions.
``lora_ga_scale``: "stable" multiplies B by out^¼ / √gamma, "gd_scale" divides both by the LoRA
scale, "unit" leaves them. The base keeps ``W − s·B0 A0`` (``residual.py``), as with PiSSA.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.config import ConfigError, check_choice, check_positive

GA_DIRECTIONS = ("ArB2r", "A2rBr", "ArBr")
GA_SCALES = ("stable", "gd_scale", "unit")
DATA_INITS = ("lora_ga", "corda")  # the inits that read init_batches


def check_lora_ga(config) -> None:
    """The data-driven inits' fields on a LoraConfig: batches exactly when init needs them (LoRA-GA, CorDA),
    and LoRA-GA's known options."""
    batches = config.init_batches
    needs = config.init in DATA_INITS
    if needs and (not isinstance(batches, (list, tuple)) or not batches or not all(isinstance(b, dict) for b in batches)):
        what = "each target's gradient" if config.init == "lora_ga" else "each target's input covariance"
        labels = " (labels included, so it returns a loss)" if config.init == "lora_ga" else ""
        raise ConfigError(f"init={config.init!r} estimates {what} on calibration batches: init_batches must be "
                          f"a non-empty list of keyword dicts the model takes{labels}, got {_short(batches)}")
    if not needs and batches is not None:
        raise ConfigError(f"init_batches is used by init='lora_ga' and 'corda' only, but init={config.init!r}; drop init_batches")
    check_choice("lora_ga_direction", config.lora_ga_direction, GA_DIRECTIONS)
    check_choice("lora_ga_scale", config.lora_ga_scale, GA_SCALES)
    check_positive("lora_ga_gamma", config.lora_ga_gamma)


def _short(value) -> str:
    return f"a {type(value).__name__} of {len(value)}" if isinstance(value, (list, tuple)) and value else repr(value)


def mean_gradients(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """{name: mean over ``batches`` of d loss / d weight} for the modules ``names``; nothing else gets a
    gradient, and every parameter's ``requires_grad``, ``.grad`` and the model's mode are put back."""
    weights = {name: model.get_submodule(name).weight for name in names}
    wanted = {id(w) for w in weights.values()}
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    was_training = model.training
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    try:
        for param, _, _ in saved:
            param.requires_grad_(id(param) in wanted)
            param.grad = None
        model.train()
        with torch.enable_grad():
            for batch in batches:
                model(**batch).loss.backward()
                for name, weight in weights.items():
                    sums[name] += weight.grad.float()
                    weight.grad = None
    finally:
        for param, requires_grad, grad in saved:
            param.requires_grad_(requires_grad)
            param.grad = grad
        model.train(was_training)
    return {name: total / len(batches) for name, total in sums.items()}


@torch.no_grad()
def lora_ga_factors(gradient: torch.Tensor, r: int, scale: float, direction: str, ga_scale: str,
                    gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) in float32 from the canonical (out, in) mean ``gradient``."""
    gradient = gradient.float()
    u, s, v = torch.svd_lowrank(gradient, q=min(4 * r, min(gradient.shape)), niter=4)
    vh = v.T
    first, second = slice(0, r), slice(r, 2 * r)
    a_rows, b_cols = {"ArB2r": (first, second), "A2rBr": (second, first), "ArBr": (slice(1, 2 * r, 2), slice(0, 2 * r, 2))}[direction]
    start_a, start_b = vh[a_rows], u[:, b_cols] * s[b_cols]
    if ga_scale == "stable":
        start_b = start_b * (gradient.shape[0] ** 0.25 / gamma ** 0.5)
    elif ga_scale == "gd_scale":
        start_a, start_b = start_a / scale, start_b / scale
    return start_a.contiguous(), start_b.contiguous()
