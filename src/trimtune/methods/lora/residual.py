"""LoRA over a rewritten base (PiSSA, OLoRA, LoRA-GA, CorDA): the factors start at a part of W, the base keeps the rest.

``ResidualLoraDelta`` is given its start ``(A0, B0)`` (from the weight: ``base_inits.py``; from
calibration batches: ``gradient_init.py``, ``context_init.py``) and ``take_from_base`` leaves
``W_res = W − s·B0 A0`` in the layer, so ``W_res + s·B A`` is the original layer at the start. It
keeps ``A0`` and ``B0`` (r·(in + out) numbers, not saved with the model's state): the change it
trained is ``s·(B A − B0 A0)`` against the *original* W, which is how it is saved (``plain_lora.py``).
``check_rewritable`` refuses an unfit target before any weight is touched.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.config import ConfigError
from ...core.delta import sliced
from ...core.four_bit import is_4bit
from ...core.layer_kinds import kind_class_for
from ...core.low_rank import slice_factors
from ...core.targets import select
from .delta import LoraDelta


class ResidualLoraDelta(LoraDelta):
    def __init__(self, layer, r: int, scale: float, dropout: float, init: str, start: tuple[torch.Tensor, torch.Tensor]):
        """``start``: (A0, B0) in float32 (``make._start`` picks how they are computed)."""
        super().__init__(layer.kind, layer.weight, r, scale, dropout)
        self.init = init
        start_a, start_b = start
        with torch.no_grad():
            self.lora_A.copy_(start_a)
            self.lora_B.copy_(start_b)
        self.register_buffer("initial_A", start_a.to(self.lora_A.dtype), persistent=False)
        self.register_buffer("initial_B", start_b.to(self.lora_B.dtype), persistent=False)

    def initial_change(self) -> torch.Tensor:
        """``s·B0 A0`` in the base's layout: what ``take_from_base`` took out of W."""
        return self.kind.factors_to_weight(self.initial_A, self.initial_B) * self.scale

    @torch.no_grad()
    def take_from_base(self, layer) -> None:
        # from the float32 start, as peft does, so the residual is the same to the last bit
        start_a, start_b = self.initial_A.float(), self.initial_B.float()
        residual = layer.kind.to_canonical(layer.weight.detach()).float() - self.scale * (start_b @ start_a)
        layer.weight.copy_(layer.kind.from_canonical(residual))

    def as_plain_lora(self, weight: torch.Tensor) -> LoraDelta:
        """The same change against the original W as a plain LoRA of rank 2r:
        ``s·(B A − B0 A0) = s·[B, −B0] [A; A0]`` (peft's conversion, so peft users load it)."""
        plain = LoraDelta(self.kind, weight, 2 * self.r, self.scale, self.dropout)
        with torch.no_grad():
            plain.lora_A.copy_(torch.cat([self.lora_A, self.initial_A], dim=0))
            plain.lora_B.copy_(torch.cat([self.lora_B, -self.initial_B], dim=1))
        return plain

    def slice_(self, dim, keep):
        slice_factors(self, dim, keep)
        if dim == "out":
            self.initial_B = sliced(self.initial_B, 0, keep).detach()
        else:
            self.initial_A = sliced(self.initial_A, 1, keep).detach()

    def extra_repr(self):
        return f"{super().extra_repr()}, init={self.init}"


def check_rewritable(model: nn.Module, config) -> list[str]:
    """The targets' names; refuses, before any weight changes, a target whose base ``config.init`` cannot rewrite."""
    shared = _shared_parameters(model)
    names = select(model, config.targets, getattr(config, "default_targets", None))
    for name in names:
        layer = model.get_submodule(name)
        reason = "shares its weight with another module (tied embeddings?)" if id(layer.weight) in shared else None
        reason = reason or _why_not_rewritable(layer) or _too_narrow(layer, config.for_layer(name))
        if reason:
            raise ConfigError(f"init={config.init!r} moves part of each target's base weight into the adapter, but "
                              f"{name} {reason}; use init='default' or 'gaussian' there (or leave it out of targets)")
    return names


def _too_narrow(layer: nn.Module, config) -> str | None:
    narrowest = min(layer.weight.shape[:2])
    needed = 2 * config.r if config.init == "lora_ga" else config.r  # LoRA-GA splits 2r directions between A and B
    if needed > narrowest:
        return f"has {narrowest} units on its narrow side, fewer than the {needed} directions init={config.init!r} takes"
    return None


def _why_not_rewritable(layer: nn.Module) -> str | None:
    kind = getattr(layer, "kind", None) or kind_class_for(layer)(layer)
    weight = layer.weight
    if is_4bit(weight) or not weight.is_floating_point():
        return ("is stored in 4 bits (a 4-bit base cannot hold the exact residual; peft's PiSSA on a quantised base "
                "needs LoftQ, which trimtune does not have yet): apply it on the float base, then quantise")
    if not kind.linear_layout:
        return f"is a {type(getattr(layer, 'base_layer', layer)).__name__}; it works on linear layers only"
    if getattr(layer, "weight_mask", None) is not None:
        return "is pruned (its mask would cut the residual, so the start would change the model)"
    rewritten = [n for n, d in getattr(layer, "deltas", {}).items() if isinstance(d, ResidualLoraDelta)]
    if rewritten:
        return f"was already rewritten by adapter {rewritten[0]!r} (two rewrites of one base cannot be switched between)"
    return None


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters held by more than one module (a tied head): rewriting one would rewrite both."""
    seen, shared = set(), set()
    for _, param in model.named_parameters(remove_duplicate=False):
        (shared if id(param) in seen else seen).add(id(param))
    return shared
