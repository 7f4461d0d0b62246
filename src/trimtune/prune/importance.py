"""Importance scores: callables ``importance(name, layer) -> scores`` (same shape as ``layer.weight``).

Higher means more important. A granularity reduces element scores over a structure (row, input
channel, head, block) with the norm ``importance.norm`` unless the prune config names another.
Anything with this signature is an importance; these are the usual ones:

- ``Magnitude(p)``: |w| per element, structures reduced with the Lp norm (as ``ln_structured``).
- ``Random(seed)``: seeded, and drawn exactly as ``torch.nn.utils.prune.random_unstructured``
  draws (one uniform per surviving entry), so the same seed gives the same mask.
- ``Taylor(scores)``: |w · dL/dw| summed over calibration batches (``collect_taylor``).
- ``Wanda(input_norms)``: |w| · ||X_j||_2 per input channel j (``collect_input_norms``).
- ``Movement()``: -Σ w · dL/dw accumulated during fine-tuning (Sanh et al., 2020); call
  ``update(model)`` after each backward.
"""

from __future__ import annotations

import torch

from ..core.config import ConfigError
from ..core.tuned_layer import TunedLayer


class Magnitude:
    def __init__(self, p: float = 1):
        if not (p == float("inf") or (isinstance(p, (int, float)) and p > 0)):
            raise ConfigError(f"Magnitude p must be a positive number or inf (L1, L2, L∞), got {p!r}")
        self.norm = p

    def __call__(self, name: str, layer: TunedLayer) -> torch.Tensor:
        return layer.weight.detach().abs()

    def __repr__(self):
        return f"Magnitude(p={self.norm})"


class Random:
    """Uniform random scores; the surviving entries are scored in order, one draw each, so
    repeated pruning draws like torch's pruning container does."""

    norm = 1

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, name, layer):
        weight = layer.weight
        alive = torch.ones_like(weight, dtype=torch.bool) if layer.weight_mask is None else layer.weight_mask == 1
        scores = torch.full(weight.shape, float("inf"))
        # torch prunes the entries with the *largest* draw, so the score is minus the draw
        scores[alive] = -torch.rand(int(alive.sum()), generator=self.generator)
        return scores.to(weight.device)

    def __repr__(self):
        return f"Random(seed={self.seed})"


def _lookup(table: dict, name: str, method: str, how: str) -> torch.Tensor:
    if name not in table:
        raise ValueError(f"{method} has no calibration data for layer {name!r}; {how}")
    return table[name]


class Wanda:
    """Sun et al., 2023: |W_ij| · ||X_j||_2, the weight times the norm of its input channel."""

    norm = 1

    def __init__(self, input_norms: dict[str, torch.Tensor] | None = None):
        if not input_norms:
            raise ConfigError(
                "Wanda needs calibration activations: pass input_norms=collect_input_norms(model, batches)"
            )
        self.input_norms = input_norms

    def __call__(self, name, layer):
        norms = _lookup(self.input_norms, name, "Wanda", "collect_input_norms over the same targets first")
        weight = layer.weight.detach()
        inputs = layer.kind.weight_shape(weight)[1]
        if norms.dim() != 1 or norms.numel() != inputs:
            raise ValueError(f"Wanda: the input norms for {name} have shape {tuple(norms.shape)}, but the layer has "
                             f"{inputs} input channels (one norm each); collect them with collect_input_norms on this model")
        shape = [1] * weight.dim()
        shape[layer.kind.in_dim] = -1
        return weight.abs().mul_(norms.to(weight.device, weight.dtype).view(shape))  # in place: one layer-sized tensor, not two


class Taylor:
    """First-order Taylor: |w · dL/dw| accumulated over calibration batches."""

    norm = 1

    def __init__(self, scores: dict[str, torch.Tensor] | None = None):
        if not scores:
            raise ConfigError("Taylor needs calibration gradients: pass scores=collect_taylor(model, batches, loss_fn)")
        self.scores = scores

    def __call__(self, name, layer):
        return _lookup(self.scores, name, "Taylor", "collect_taylor over the same targets first")


class Movement:
    """Movement pruning: entries moving towards zero during fine-tuning score low."""

    norm = 1

    def __init__(self):
        self.scores: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model) -> None:
        """Accumulate -w · grad for every layer whose weight has a gradient (wrapped or not yet:
        the name is the same either way)."""
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.grad is not None and ".deltas." not in f".{name}.":
                step = -(weight * weight.grad)
                self.scores[name] = self.scores[name] + step if name in self.scores else step.clone()

    def __call__(self, name, layer):
        return _lookup(self.scores, name, "Movement", "call update(model) after each backward while fine-tuning")
