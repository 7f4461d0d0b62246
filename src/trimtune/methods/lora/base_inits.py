"""LoRA initialisations that start the factors from the base weight itself, which then holds the rest.

PiSSA (Meng et al., 2024) takes the top-r singular triplets of W: ``s·B0 A0 = U_r S_r V_rᵀ``, with
``A0 = sqrt(S_r / s) V_rᵀ`` and ``B0 = U_r sqrt(S_r / s)``, so the adapter trains W's principal part.
``pissa_niter_K`` finds them with K subspace iterations of a randomised SVD (``torch.svd_lowrank``):
much faster on large weights, at the cost of a slightly less exact top-r part. OLoRA (Büyükakyüz,
2024) takes the first r columns of W's QR decomposition: ``B0 = Q_r``, ``A0 = R_r``.

Either way the base keeps the residual ``W − s·B0 A0``, so the model's output is unchanged at the start.
The factors are computed in float32 from the canonical (out, in) weight, as peft does.
"""

from __future__ import annotations

import re

import torch

from ...core.config import ConfigError

PLAIN_INITS = ("default", "gaussian")
BASE_INITS = ("pissa", "olora", "lora_ga", "corda")  # lora_ga: gradient_init.py, corda: context_init.py
_FAST_PISSA = re.compile(r"pissa_niter_([1-9][0-9]*)")


def check_init(init) -> None:
    """Raise ``ConfigError`` unless ``init`` names an initialisation trimtune's LoRA has."""
    if init in PLAIN_INITS + BASE_INITS or (isinstance(init, str) and _FAST_PISSA.fullmatch(init)):
        return
    allowed = ", ".join(map(repr, PLAIN_INITS + BASE_INITS))
    raise ConfigError(f"init must be one of {allowed} or 'pissa_niter_K' (K an integer >= 1: "
                      f"PiSSA by a randomised SVD with K iterations), got {init!r}")


def rewrites_base(init: str) -> bool:
    """Whether ``init`` moves part of the base weight into the factors (the base then changes)."""
    return init in BASE_INITS or bool(_FAST_PISSA.fullmatch(init))


@torch.no_grad()
def initial_factors(weight: torch.Tensor, r: int, scale: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A0, B0) in float32 for the canonical (out, in) ``weight``, such that ``s·B0 A0`` is the part taken out."""
    weight = weight.float()
    if init == "olora":
        q, upper = torch.linalg.qr(weight)
        return upper[:r].contiguous(), q[:, :r].contiguous()
    fast = _FAST_PISSA.fullmatch(init)
    if fast:
        u, s, v = torch.svd_lowrank(weight, q=r, niter=int(fast.group(1)))
        vh = v.T
    else:
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = torch.sqrt(s[:r] / scale)  # split S_r / s evenly between the factors
    return (root[:, None] * vh[:r]).contiguous(), (u[:, :r] * root).contiguous()
