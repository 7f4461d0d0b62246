"""Which base model an artifact belongs to: a fingerprint computed from the base tensors only.

A fingerprint holds the model class and ``config.model_type``, the number of base parameters, a
hash of every base parameter's name and shape, and a few sampled weight values. The samples are
stored as numbers rather than hashed so that the check tolerates a cast of the same base (fp32 ->
bf16 keeps ~3 significant digits) while two different bases (other seed, other checkpoint) differ
at once. Adapter tensors (``.deltas.``, per-adapter ``.copies.``, any host's adapter parameters)
are excluded, and so are vectors (biases, norms: ``bias="all"`` trains them) — only matrices are
sampled. A merged adapter has changed the base weights, so the fingerprint refuses to read them.
Pruning masks are part of the base an adapter was trained on (prune, then recover with LoRA): their
hash is recorded too, so the adapter is refused on the same weights pruned otherwise or not at all.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ..parameter_host import ParameterHost
from ..plain_four_bit import ABSMAX, is_plain_4bit
from ..state import hosts, layers
from ..tuned_layer import TunedLayer
from .gather import model_class, unsharded, whole

SAMPLED_TENSORS = 8
SAMPLES_PER_TENSOR = 2
RTOL, ATOL = 2e-2, 1e-3  # bf16 round trip of an fp32 weight stays well inside this


class BaseMismatchError(ValueError):
    """An artifact was made for a different base model than the one it is loaded onto."""


def base_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the base model's own parameters, adapters excluded, sorted by name. The
    block scales of a 4-bit base stored as plain tensors (for FSDP2) are part of its quantisation
    state, which a ``Params4bit`` carries unlisted: excluded too, so sharding changes nothing here."""
    excluded = set()
    for _, host in hosts(model):
        for name in host.adapter_names():
            excluded.update(id(p) for p in host.trainable_parameters(name))
    excluded.update(id(getattr(layer, ABSMAX)) for _, layer in layers(model) if is_plain_4bit(layer))
    return sorted(
        (name, param)
        for name, param in model.named_parameters()
        if ".deltas." not in name and ".copies." not in name and id(param) not in excluded
    )


def _logical_shapes(model: nn.Module, params: list[tuple[str, torch.Tensor]]) -> dict[str, tuple[int, ...]]:
    """{name: shape}, a packed 4-bit weight by its unpacked shape (from its ``quant_state``, or from
    its layer's ``quant_template`` once stored as plain tensors for FSDP2)."""
    plain = {f"{name}.weight": tuple(layer.quant_template.shape) for name, layer in layers(model) if is_plain_4bit(layer)}
    shapes = {}
    for name, param in params:
        quant_state = getattr(param, "quant_state", None)
        shapes[name] = plain.get(name) or (tuple(quant_state.shape) if quant_state is not None else tuple(param.shape))
    return shapes


def fingerprint(model: nn.Module) -> dict:
    merged = sorted({n for _, host in hosts(model) if isinstance(host, (TunedLayer, ParameterHost)) for n in host.merged})
    if merged:
        raise ValueError(
            f"adapters {merged} are merged into the base weights, so the base cannot be fingerprinted; "
            "unmerge(model) first (or load with check_base=False)"
        )
    params = base_parameters(model)
    shapes = _logical_shapes(model, params)
    listing = "\n".join(f"{name}:{list(shapes[name])}" for name, _ in params)
    return {
        "architecture": model_class(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "num_parameters": sum(math.prod(shape) for shape in shapes.values()),
        "shapes_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "samples": _samples(params),
        "masks_sha256": _masks_hash(model),
    }


def _masks_hash(model: nn.Module) -> str | None:
    """sha256 over every wrapped layer's name and mask pattern; None when nothing is masked."""
    masked = [(name, layer.weight_mask) for name, layer in layers(model) if layer.weight_mask is not None]
    if not masked:
        return None
    digest = hashlib.sha256()
    for name, mask in masked:
        digest.update(f"{name}:{list(mask.shape)}".encode())
        digest.update(mask.detach().ne(0).cpu().numpy().tobytes())
    return digest.hexdigest()


def _samples(params: list[tuple[str, torch.Tensor]]) -> list[list]:
    """[name, flat index, value] for a few entries of evenly spaced weight matrices."""
    matrices = [(n, p) for n, p in params if p.dim() >= 2 and p.is_floating_point() and getattr(p, "quant_state", None) is None]
    if not matrices:
        return []
    step = max(1, len(matrices) // SAMPLED_TENSORS)
    samples = []
    for name, param in matrices[::step][:SAMPLED_TENSORS]:
        flat = whole(param).reshape(-1)  # a sharded (FSDP) weight is gathered: every rank samples the same
        for k in range(SAMPLES_PER_TENSOR):
            index = (2 * k + 1) * flat.numel() // (2 * SAMPLES_PER_TENSOR)  # away from the edges
            samples.append([name, index, float(flat[index])])
    return samples


def check_fingerprint(saved: dict, model: nn.Module, what: str = "this artifact") -> None:
    """Raise ``BaseMismatchError`` saying how ``model`` differs from the base ``saved`` describes."""
    current = fingerprint(model)
    override = "If you are sure, load with check_base=False."
    for field in ("architecture", "model_type"):
        if saved.get(field) != current[field]:
            raise BaseMismatchError(
                f"{what} was made for {field} {saved.get(field)!r}, but the model's is {current[field]!r}. {override}"
            )
    if saved.get("shapes_sha256") != current["shapes_sha256"]:
        raise BaseMismatchError(
            f"{what} was made for a base with other parameter names or shapes ({saved.get('num_parameters')} "
            f"parameters then, {current['num_parameters']} in the model: another size, or a pruned/shrunk base?). "
            f"{override}"
        )
    if "masks_sha256" in saved and saved["masks_sha256"] != current["masks_sha256"]:
        if saved["masks_sha256"] is None:
            reason = "an unpruned base, but this model has pruning masks"
        elif current["masks_sha256"] is None:
            reason = "a pruned base, but this model has no pruning masks"
        else:
            reason = "a base pruned with other masks than this model's"
        raise BaseMismatchError(f"{what} was made for {reason}: apply the same pruning before loading. {override}")
    values = dict(((n, i), v) for n, i, v in current["samples"])
    for name, index, value in saved.get("samples", []):
        now = values.get((name, index))
        if now is None or not math.isclose(now, value, rel_tol=RTOL, abs_tol=ATOL):
            raise BaseMismatchError(
                f"{what} was made for a base with other weights: {name}[flat {index}] was {value:.6g}, "
                f"the model has {now if now is None else f'{now:.6g}'} (same architecture, different checkpoint "
                f"or seed). {override}"
            )



# ---- the tensors an artifact changes ----
# The samples above rarely hit the entries an adapter or a 0.5 % diff changes, so a base that already
# holds the change (the adapter merged and saved, say) would pass them. Each artifact therefore also
# records, per weight it changes, the base weight's norm and its component along the artifact's own
# dense change D (‖D‖ too). Loading recomputes both from the loaded artifact: a base holding the change
# is off by ‖D‖ along D; a cast of the right base is off by far less.
CHANGE_RTOL = 1e-2  # the norm of a changed tensor: a bf16 cast moves it ~1e-3


@torch.no_grad()
def dense_change(layer, delta) -> torch.Tensor | None:
    """The change ``delta`` makes to ``layer``'s weight when merged (None: not a weight change)."""
    if not delta.mergeable or not layer.weight.is_floating_point():
        return None
    weight = layer.weight.detach().clone()
    bias = None if layer.bias is None else layer.bias.detach().clone()
    try:
        delta.merge_into(weight, bias, None)
    except NotImplementedError:
        return None
    return (weight - layer.weight).float()


@torch.no_grad()
def change_fingerprint(model: nn.Module, adapter: str) -> dict[str, list[float]]:
    """{layer: [‖W‖, ⟨W, D⟩/‖D‖, ‖D‖]} for each weight adapter ``adapter`` changes (D ≠ 0)."""
    record = {}
    for name, layer in layers(model):
        if adapter not in layer.deltas or adapter in layer.merged:
            continue
        # FSDP: this layer's unit whole for the moment (every rank); its storage is freed on leaving,
        # so everything is computed inside
        with unsharded(model, name):
            change = dense_change(layer, layer.deltas[adapter])
            if change is None or float(change.norm()) == 0.0:
                continue
            weight = layer.weight.detach().float()
            size = float(change.norm())
            record[name] = [float(weight.norm()), float((weight * change).sum()) / size, size]
    return record


def check_changes(saved: dict[str, list[float]], model: nn.Module, adapter: str, what: str) -> None:
    """Refuse a base whose changed tensors are not those the artifact was made on (e.g. it already holds it)."""
    current = change_fingerprint(model, adapter)
    for name, (norm, along, size) in saved.items():
        if name not in current:
            continue
        now_norm, now_along, _ = current[name]
        if abs(now_along - along) > 0.5 * size:
            raise BaseMismatchError(
                f"{what} changes {name}, but that weight already differs from the base it was made on along the "
                f"artifact's own change ({now_along - along:+.4g} of a change of size {size:.4g}): the artifact looks "
                "merged into this model already (loading it would apply it twice). Load it onto the original base; "
                "if you are sure, load with check_base=False."
            )
        if not math.isclose(now_norm, norm, rel_tol=CHANGE_RTOL):
            raise BaseMismatchError(
                f"{what} changes {name}, whose norm was {norm:.6g} in the base it was made on but is {now_norm:.6g} "
                "here: that weight was changed since. Load it onto the original base; if you are sure, load with "
                "check_base=False."
            )
