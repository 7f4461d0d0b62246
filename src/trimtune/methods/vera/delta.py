"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices for the whole model, and two
trained vectors per layer,

    y += λ_b ⊙ (B[:out] (λ_d ⊙ (A[:, :in] dropout(x))))

A (r × largest in) and B (largest out × r) are drawn once per adapter from a generator seeded with
``projection_prng_key`` (Kaiming-uniform, A first, as peft does, so the same key gives peft's
matrices) and every layer reads the leading block it needs. They are a model-level thing: they live
in one ``VeraProjections`` module registered on the model (non-persistent buffers: the model's
state dict is unchanged, ``.to()`` moves them once) and each layer's delta keeps a reference to it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.adapter_host import AdapterHost
from ...core.delta import Delta
from ...core.io.peft_format import PREFIX
from ...core.layer_kinds import LayerKind

# peft keeps the shared matrices on its tuner model, one level above the wrapped model's keys.
SHARED_PREFIX = PREFIX.removesuffix("model.")
HOLDER = "vera_projections"  # the attribute the shared matrices' module takes on the model


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """U(-b, b), b = sqrt(3) · sqrt(2) / sqrt(fan_in), drawn from ``generator``; the bound computed
    in peft's order so the same seed gives bit-identical matrices."""
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def draw_projections(r: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = kaiming_uniform((r, in_features), generator)
    b = kaiming_uniform((out_features, r), generator)
    return a, b


class SharedPair(nn.Module):
    """One adapter's A and B (non-persistent: they go into adapter files, not the model's state dict)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, save_projection: bool):
        super().__init__()
        self.register_buffer("vera_A", a, persistent=False)
        self.register_buffer("vera_B", b, persistent=False)
        self.save_projection = save_projection


class VeraProjections(AdapterHost):
    """The shared matrices of every VeRA adapter on a model, by adapter name. An adapter host, so
    deleting or unloading the adapter drops them and saving writes them (as peft's
    ``base_model.vera_A`` / ``base_model.vera_B`` when ``save_projection``)."""

    mixes_rows = True  # never run itself: the layers' deltas read the pairs, so a mixed batch just works

    def __init__(self):
        super().__init__()
        self.pairs = nn.ModuleDict()

    def add(self, name: str, pair: SharedPair) -> None:
        self.pairs[name] = pair

    def set_active(self, names) -> None:
        self.active = tuple(n for n in names if n in self.pairs)

    def adapter_names(self) -> list[str]:
        return list(self.pairs)

    def delete_adapter(self, name: str) -> None:
        del self.pairs[name]

    def trainable_parameters(self, name: str) -> list[nn.Parameter]:
        return []  # frozen by design: only the per-layer vectors train

    def peft_tensors(self, name: str, path: str) -> dict[str, torch.Tensor]:
        pair = self.pairs[name]
        if not pair.save_projection:
            return {}
        return {f"{SHARED_PREFIX}vera_A": pair.vera_A, f"{SHARED_PREFIX}vera_B": pair.vera_B}


class VeraDelta(Delta):
    """The trained vectors λ_b (one per output unit) and λ_d (one per rank) of one layer."""

    def __init__(self, kind: LayerKind, weight: torch.Tensor, shared: SharedPair, dropout: float, d_initial: float):
        super().__init__(kind)
        object.__setattr__(self, "shared", shared)  # the model's pair: read live, never copied
        self.out_features, self.in_features = kind.weight_shape(weight)
        r = shared.vera_A.shape[0]
        self.dropout = dropout
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, device=weight.device))
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(d_initial), device=weight.device))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's blocks of the shared matrices: A[:, :in] and B[:out]."""
        return self.shared.vera_A[:, : self.in_features], self.shared.vera_B[: self.out_features]

    def add_output(self, y, x):
        a, b = self._factors()
        x = F.dropout(x.to(self.vera_lambda_d.dtype), self.dropout, self.training)
        change = self.vera_lambda_b * F.linear(self.vera_lambda_d * F.linear(x, a), b)
        return (y + change).to(y.dtype)

    def delta_weight(self):
        a, b = self._factors()
        product = (self.vera_lambda_b.unsqueeze(-1) * b) @ (self.vera_lambda_d.unsqueeze(-1) * a)
        return self.kind.from_canonical(product)

    def extra_repr(self):
        return f"r={self.vera_lambda_d.numel()}, out={self.out_features}, dropout={self.dropout:g}"
