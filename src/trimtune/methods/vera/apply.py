"""Adding a VeRA adapter: one shared pair of matrices sized for the largest target, then a delta per target."""

from __future__ import annotations

from torch import nn

from ...core.adapters import apply_weight_method
from ...core.state import wrapped
from ...core.targets import select
from .config import VeraConfig
from .delta import HOLDER, SharedPair, VeraDelta, VeraProjections, draw_projections


def projections_of(model: nn.Module) -> VeraProjections:
    """The model's ``VeraProjections`` module, registered on first use."""
    holder = getattr(model, HOLDER, None)
    if holder is None:
        holder = VeraProjections().train(model.training)
        model.add_module(HOLDER, holder)
    elif not isinstance(holder, VeraProjections):
        raise ValueError(f"the model already has an attribute {HOLDER!r} ({type(holder).__name__}); VeRA keeps its "
                         "shared matrices there")
    return holder


def apply_vera(model: nn.Module, config: VeraConfig, name: str) -> None:
    with wrapped(model, select(model, config.targets)) as layers:  # a refused target leaves no layer wrapped
        targets = list(layers.values())
        for layer in targets:
            if not layer.kind.linear_layout:
                raise ValueError(f"VeRA supports Linear and GPT-2 Conv1D layers; {layer.module_name} is {layer.describe()} "
                                 "(choose targets among the linear layers)")
    # As peft: A spans the widest input and B the widest output of the targets; each layer reads its block.
    shapes = [layer.kind.weight_shape(layer.weight) for layer in targets]
    a, b = draw_projections(config.r, max(i for _, i in shapes), max(o for o, _ in shapes), config.projection_prng_key)
    device = targets[0].weight.device
    pair = SharedPair(a.to(device), b.to(device), config.save_projection)
    projections_of(model).add(name, pair)  # a host: a failure below removes it with the layers' deltas

    def make_delta(layer, cfg: VeraConfig) -> VeraDelta:
        return VeraDelta(layer.kind, layer.weight, pair, cfg.dropout, cfg.d_initial)

    apply_weight_method(model, config, name, make_delta)
