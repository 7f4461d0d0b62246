"""(IA)^3 (Liu et al., 2022): learned vectors that rescale activations of a frozen model.

On keys and values (and whatever else is targeted) the vector scales the layer's *output*
(``transform_output``); on the feed-forward down projection it scales the layer's *input*
(``scale_input``), as in the paper. Both fold into the weight by multiplication, so merge
multiplies and unmerge divides (exact up to rounding; a zero entry cannot be unmerged).

The vector ``ia3_l`` has peft's shape — ``(out, 1)`` for output scaling, ``(1, in)`` for input
scaling — and starts at ones, so the model is unchanged until training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ...core.architectures import defaults
from ...core.config import ConfigError, check_choice
from ...core.delta import Delta
from ...core.io.peft_format import check_fields, targets_from_peft
from ...core.layer_kinds import EmbeddingKind, GPT2Conv1DKind, LayerKind
from ...core.targets import TargetSpec, to_predicate

# peft's per-architecture choices (TRANSFORMERS_MODELS_TO_IA3_*): targets, and which of them are feed-forward.
IA3_TARGETS: dict[str, list[str]] = defaults("ia3")
IA3_FEEDFORWARD: dict[str, list[str]] = defaults("ia3_feedforward")


@dataclass
class IA3Config:
    """targets: layers to scale (None: peft's per-architecture default, e.g. Llama k/v/down_proj).

    feedforward: which of the targets get their *input* scaled (spec like ``targets``; None, as in
    peft: the default feed-forward names such as ``down_proj``; ``[]``: none). init: "ones" (the model
    starts unchanged) or "random" (normal, for tests). modules_to_save: trained in full, per adapter.
    Note that peft's name matching makes BERT's ``output.dense`` cover both the attention output
    and the FFN output projections; the defaults keep that for file compatibility.
    """

    peft_type: ClassVar[str] = "IA3"

    targets: TargetSpec = None
    feedforward: TargetSpec = None
    init: str = "ones"
    modules_to_save: list[str] = field(default_factory=list)
    default_targets: ClassVar[dict[str, list[str]]] = IA3_TARGETS

    def __post_init__(self):
        check_choice("init", self.init, ("ones", "random"))
        self.modules_to_save = list(self.modules_to_save or [])
        names = (list, tuple, set)
        if isinstance(self.targets, names) and isinstance(self.feedforward, names):
            outside = sorted(set(self.feedforward) - set(self.targets))
            if outside:
                raise ConfigError(f"feedforward must be a subset of targets; {outside} are not in targets {list(self.targets)}")

    # ---- PEFT adapter files (convention: trimtune/io/peft_format.py) ----
    def to_peft_dict(self, layers: dict) -> dict:
        # Exact layer names for both lists: peft matches feed-forward names with a bare endswith and
        # demands them to be a subset of target_modules, so specs could change meaning across.
        return {
            "target_modules": sorted(layers),
            "feedforward_modules": sorted(n for n, layer in layers.items() if self.is_feedforward(layer)),
            "init_ia3_weights": True,
            "modules_to_save": self.modules_to_save or None,
            "fan_in_fan_out": any(isinstance(layer.kind, GPT2Conv1DKind) for layer in layers.values()),
        }

    @classmethod
    def from_peft_dict(cls, d: dict) -> IA3Config:
        check_fields(d, {"target_modules", "feedforward_modules", "init_ia3_weights", "modules_to_save", "fan_in_fan_out"}, cls.peft_type)
        return cls(
            targets=targets_from_peft(d.get("target_modules")),
            feedforward=targets_from_peft(d.get("feedforward_modules")),
            modules_to_save=list(d.get("modules_to_save") or []),
        )

    def is_feedforward(self, layer) -> bool:
        # Like peft, None means the default feed-forward names; they are distinct across the
        # architectures above, so their union is safe and needs no model type.
        spec = sorted({n for names in IA3_FEEDFORWARD.values() for n in names}) if self.feedforward is None else self.feedforward
        return to_predicate(spec, None)(layer.module_name, layer.base_layer)


class IA3Delta(Delta):
    def __init__(self, kind: LayerKind, weight: torch.Tensor, feedforward: bool, init: str = "ones"):
        super().__init__(kind)
        out_features, in_features = kind.weight_shape(weight)
        self.feedforward = feedforward
        shape = (1, in_features) if feedforward else (out_features, 1)
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        self.ia3_l = nn.Parameter(torch.ones(shape, device=weight.device, dtype=dtype))
        if init == "random":
            with torch.no_grad():
                self.ia3_l.normal_(1.0, 0.1)

    # Both stages are defined; the one not in use is removed per instance in ``stages``.
    def scale_input(self, x):
        return x * self._vector(x, self.kind.input_channel_dim)

    def transform_output(self, y):
        return y * self._vector(y, self.kind.output_channel_dim)

    def stages(self):
        return ("scale_input",) if self.feedforward else ("transform_output",)

    def _vector(self, t: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """The vector shaped to broadcast along ``t``'s channel dimension."""
        shape = [1] * t.dim()
        shape[channel_dim] = -1
        return self.ia3_l.reshape(shape).to(t.dtype)

    # ---- merging: the scaling multiplies the weight's input columns or output rows ----
    def _weight_factor(self, weight: torch.Tensor) -> torch.Tensor:
        dim = self.kind.in_dim if self.feedforward else self.kind.out_dim
        shape = [1] * weight.dim()
        shape[dim] = -1
        return self.ia3_l.reshape(shape).to(weight.dtype)

    def merge_into(self, weight, bias, mask):
        weight.mul_(self._weight_factor(weight))
        if bias is not None and not self.feedforward:
            bias.mul_(self.ia3_l.reshape(bias.shape).to(bias.dtype))

    def unmerge_from(self, weight, bias, mask):
        if (self.ia3_l == 0).any():
            raise ValueError("an IA3 vector with zero entries cannot be unmerged (the scaled rows are lost)")
        weight.div_(self._weight_factor(weight))
        if bias is not None and not self.feedforward:
            bias.div_(self.ia3_l.reshape(bias.shape).to(bias.dtype))

    def delta_weight(self):
        raise NotImplementedError("IA3 multiplies the weight; it has no additive dense form (use merge)")

    def slice_(self, dim, keep):
        if dim not in ("out", "in"):
            raise ValueError(f"dim must be 'out' or 'in', got {dim!r}")
        if (dim == "in") != self.feedforward:
            return  # the vector runs along the other side of the weight: nothing to drop
        axis = 1 if self.feedforward else 0
        with torch.no_grad():
            self.ia3_l = nn.Parameter(self.ia3_l.index_select(axis, keep).contiguous(), self.ia3_l.requires_grad)

    def extra_repr(self):
        return f"{'input' if self.feedforward else 'output'} scaling, {self.ia3_l.numel()} entries"


def make_ia3(layer, config: IA3Config) -> IA3Delta:
    if isinstance(layer.kind, EmbeddingKind):
        raise ValueError(
            f"IA3 cannot scale {layer.module_name or 'an embedding'} ({layer.describe()}): it takes token ids, "
            "not activations. IA3 supports Linear, GPT-2 Conv1D and Conv layers"
        )
    return IA3Delta(layer.kind, layer.weight, config.is_feedforward(layer), config.init)
