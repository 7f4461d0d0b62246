"""Learned gates on output units (channels, or heads as groups of consecutive units): dynamic
pruning and L0 regularisation.

``apply(model, GateConfig(...), name="gates")`` adds a gate delta to each target layer; the layer's
output is multiplied per output unit by a gate z in [0, 1]:

- ``kind="sigmoid"``: z = sigmoid(logit);
- ``kind="hard_concrete"`` (Louizos et al., 2018): a stretched, clipped binary-concrete sample
  during training, so z is exactly 0 or 1 with non-zero probability; ``l0_penalty`` is the expected
  number of open gates. At eval z is deterministic.
- ``input_dependent=True``: logits come from a small gating network on the (pooled) layer input,
  one set of gates per example.

A trained gate is then either (a) kept at runtime (``runtime_skip(model)``): output units whose
gate is 0 are not computed (for input-dependent gates, the units closed for the whole batch), or
(b) turned into a static mask with ``gates_to_masks`` (closed units pruned and recorded, open
gates folded into the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapters import delete_adapter
from ..core.method import WeightDeltaMethod, register
from ..core.config import ConfigError, check_choice, check_positive, check_positive_int
from ..core.delta import Delta
from ..core.hard_concrete import PAPER, HardConcrete
from ..core.layer_kinds import ConvKind
from ..core.masks import canonical_mask, record_pruned, set_canonical_mask
from ..core.state import layers, state_of
from ..core.targets import TargetSpec


@dataclass
class GateConfig:
    """kind: "sigmoid" or "hard_concrete". group_size: consecutive output units sharing a gate (a
    head's ``head_dim`` on a value projection gates whole heads). input_dependent: gates from a
    gating network with ``hidden`` units. init: initial open probability. beta: hard-concrete
    temperature. threshold: gates at or below it count as closed."""

    targets: TargetSpec = None
    kind: str = "hard_concrete"
    group_size: int = 1
    input_dependent: bool = False
    hidden: int = 16
    init: float = 0.9
    beta: float = PAPER[0]
    gamma: float = PAPER[1]
    zeta: float = PAPER[2]
    threshold: float = 0.0

    def __post_init__(self):
        check_choice("kind", self.kind, ("sigmoid", "hard_concrete"))
        check_positive_int("group_size", self.group_size)
        check_positive_int("hidden", self.hidden)
        check_positive("beta", self.beta)
        if not self.gamma < 0 or not self.zeta > 1:
            raise ConfigError(f"gamma must be < 0 and zeta > 1 (the stretch interval around [0, 1]), got {self.gamma}, {self.zeta}")
        if not 0 < self.init < 1:
            raise ConfigError(f"init (initial open probability) must be in (0, 1), got {self.init!r}")
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold!r}")


class GateDelta(Delta):
    mergeable = False

    def __init__(self, kind, weight, config: GateConfig):
        super().__init__(kind)
        out_features, in_features = kind.weight_shape(weight)
        if out_features % config.group_size:
            raise ConfigError(f"group_size={config.group_size} does not divide the {out_features} output units")
        self.config = config
        self.hard_concrete = HardConcrete(config.beta, config.gamma, config.zeta)
        self.groups = out_features // config.group_size
        start = math.log(config.init / (1 - config.init))
        if config.input_dependent:
            self.net = nn.Sequential(nn.Linear(in_features, config.hidden), nn.ReLU(), nn.Linear(config.hidden, self.groups))
            nn.init.zeros_(self.net[2].weight)
            nn.init.constant_(self.net[2].bias, start)
        else:
            self.log_alpha = nn.Parameter(torch.full((self.groups,), start, device=weight.device))
        self._input_logits = None
        self.skip = False  # runtime_skip: do not compute closed output units at eval

    # ---- gate values ----
    def logits(self) -> torch.Tensor:
        return self._input_logits if self.config.input_dependent else self.log_alpha

    def gate(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits() if logits is None else logits
        if self.config.kind == "sigmoid":
            z = torch.sigmoid(logits)
        elif self.training:
            z = self.hard_concrete.sample(logits)
        else:
            z = self.hard_concrete.deterministic(logits)
        return torch.where(z <= self.config.threshold, torch.zeros_like(z), z) if not self.training else z

    def expected_open(self) -> torch.Tensor:
        """Expected number of non-zero gates (the L0 norm) — for hard concrete; Σ z for sigmoid."""
        logits = self.logits()
        if self.config.kind == "sigmoid":
            return torch.sigmoid(logits).sum()
        return self.hard_concrete.prob_nonzero(logits).sum()

    # ---- forward stages ----
    def scale_input(self, x):
        if self.config.input_dependent:
            channel = self.kind.input_channel_dim % x.dim()
            pooled = x.movedim(channel, -1).reshape(x.shape[0], -1, x.shape[channel]).mean(dim=1)
            self._input_logits = self.net(pooled)  # (batch, groups)
        return x

    def output_units(self, x):
        if not self.skip or self.training:
            return None
        z = self.gate()
        open_groups = (z != 0).any(dim=0) if z.dim() > 1 else z != 0
        if bool(open_groups.all()):
            return None
        return open_groups.repeat_interleave(self.config.group_size).nonzero().flatten().to(x.device)

    def transform_output(self, y):
        z = self.gate().repeat_interleave(self.config.group_size, dim=-1).to(y.dtype)
        channel = self.kind.output_channel_dim % y.dim()
        shape = [1] * y.dim()
        shape[channel] = -1
        if self.config.input_dependent:
            shape[0] = y.shape[0]
        return y * z.view(shape)

    def closed_units(self) -> torch.Tensor:
        """Output units whose (eval) gate is 0; for input-dependent gates, those closed for the last batch."""
        with torch.no_grad():
            was = self.training
            self.eval()
            z = self.gate()
            self.train(was)
        closed = (z == 0).all(dim=0) if z.dim() > 1 else z == 0
        return closed.repeat_interleave(self.config.group_size).nonzero().flatten()


def make_gate(layer, config: GateConfig) -> GateDelta:
    if isinstance(layer.kind, ConvKind) and config.input_dependent and layer.kind.shell.groups != 1:
        raise ConfigError("input-dependent gates on grouped convolutions are not supported")
    return GateDelta(layer.kind, layer.weight, config)


def _gates(model: nn.Module, name: str):
    found = [(n, layer, layer.deltas[name]) for n, layer in layers(model) if name in layer.deltas]
    if not found:
        raise KeyError(f"no gate adapter named {name!r} on this model")
    return found


def l0_penalty(model: nn.Module, name: str = "gates") -> torch.Tensor:
    """Expected number of open gates over the model (add ``λ · l0_penalty`` to the loss)."""
    return sum(delta.expected_open() for _, _, delta in _gates(model, name))


@torch.no_grad()
def gates_to_masks(model: nn.Module, name: str = "gates") -> nn.Module:
    """Static masks from static gates: closed output units are masked and recorded; open gate
    values are folded into the weight rows and bias; the gate adapter is removed."""

    for _, layer, delta in _gates(model, name):
        if delta.config.input_dependent:
            raise ValueError("input-dependent gates change per example; keep them at runtime (runtime_skip) instead")
        closed = delta.closed_units()
        delta.eval()
        z = delta.gate().repeat_interleave(delta.config.group_size)
        canon = layer.kind.to_canonical(layer.weight.data)
        canon.mul_(z.view(-1, *[1] * (canon.dim() - 1)).to(canon.dtype))
        if layer.bias is not None:
            layer.bias.data.mul_(z.to(layer.bias.dtype))
        if len(closed):
            mask = canonical_mask(layer).clone()
            mask.index_fill_(0, closed.to(mask.device), 0)
            set_canonical_mask(layer, mask)
            record_pruned(layer, "out", closed.tolist())
    if name in state_of(model).adapters:
        delete_adapter(model, name)
    return model


def runtime_skip(model: nn.Module, name: str = "gates", enabled: bool = True) -> nn.Module:
    """Keep the gates at runtime and, in eval mode, compute only the output units whose gate is
    open (for input-dependent gates: open for at least one example of the batch)."""
    for _, layer, delta in _gates(model, name):
        if isinstance(layer.kind, ConvKind) and layer.kind.shell.groups != 1:
            raise ValueError(f"runtime skipping needs groups=1 convolutions, {layer.describe()} has groups={layer.kind.shell.groups}")
        delta.skip = enabled
    return model


@register
class Gates(WeightDeltaMethod):
    """Learned L0 gates are a delta on the wrapper like any method: a pruning tool, not a recipe's method.type."""

    name = "gates"
    config = GateConfig

    def make_delta(self, layer, config: GateConfig):
        return make_gate(layer, config)
