"""Sharded data-parallel training with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

DDP (``distributed.py``) keeps a full copy of the frozen base in every process; FSDP2 splits every
parameter along dim 0 across the processes (DTensor ``Shard(0)`` on a 1-D device mesh) and gathers
one unit's parameters just before that unit's forward/backward, freeing them after. A model that
does not fit one process can then be tuned.

``shard_model`` is called *after* ``trimtune.apply``: the units are the transformer blocks (one
``fully_shard`` each) plus the root (embeddings, final norm, head, prompt encoders), so the frozen
base and the trainable deltas of one block share a unit (FSDP2 handles mixed ``requires_grad``
inside a unit: only gradients that exist are reduce-scattered). Why this works with ``TunedLayer``:
FSDP2 swaps the sharded and unsharded parameters by re-registering them on the module that owns
them (``module._parameters[name]``), and every delta reads its factors as ``self.<name>``; the
wrapper's per-stage caches hold delta *modules*, never parameter objects, so the forward always
sees the live (unsharded) tensors. Buffers are not sharded by FSDP2: pruning masks stay whole and,
built from the same seed or weights, identical on every rank (``check_replicated`` verifies that).
Tied embeddings (GPT-2, tied Llama) share one Parameter; both users sit in the root unit. A 4-bit
(QLoRA) base is sharded too, once stored as plain tensors (``store_4bit_bases_plain``).

Everything that reads a whole tensor (saving, AdaLoRA's budget, checkpoints) gathers it with
``full_tensor()`` — a collective, so every rank must make the same call.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ..core.architectures import architecture, model_type, model_types
from ..core.config import ConfigError
from ..core.four_bit import is_4bit
from ..core.plain_four_bit import store_plain
from ..core.state import layers


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (the model went through ``shard_model``)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def block_modules(model: nn.Module, block_classes: Iterable[type | str] | None = None) -> list[nn.Module]:
    """The modules to shard one by one: instances of ``block_classes`` (types or class names), by
    default the transformer block class the architecture table (``core/architectures.py``) names
    for the model's type (Llama, GPT-2, BERT, ...)."""
    if block_classes is None:
        arch = architecture(model)
        block_classes = (arch.block_class,) if arch is not None and arch.block_class else ()
    wanted = tuple(block_classes)
    names = {w for w in wanted if isinstance(w, str)}
    types = tuple(w for w in wanted if isinstance(w, type))
    blocks = [m for m in model.modules() if m is not model and (type(m).__name__ in names or (types and isinstance(m, types)))]
    # only the outermost matches: a block nested in another block travels with its parent
    inside = {id(c) for b in blocks for c in b.modules() if c is not b}
    return [b for b in blocks if id(b) not in inside]


def shard_model(model: nn.Module, block_classes: Iterable[type | str] | None = None, *, mesh=None, reshard_after_forward: bool = True,
                layer_units: bool = False) -> nn.Module:
    """Shard ``model`` (already adapted with ``trimtune.apply``) with FSDP2 across the processes of
    the default group: one unit per transformer block, the input embedding and the output head
    (unless tied), and the root for the rest. Returns the same module
    (FSDP2 shards in place; state-dict keys stay those of the unsharded model).

    ``block_classes``: the block types (or class names) to make units of, for architectures
    trimtune does not know. Raises ``ConfigError`` when no block is found, naming what to pass.
    Every refusal (no process group, no block, ranks holding different values) comes before anything
    changes. A failure inside ``fully_shard`` itself (e.g. a device the mesh does not cover) leaves the
    model partly sharded, with 4-bit bases in plain storage: FSDP2 has no way back, so rebuild it.
    ``layer_units``: also make each wrapped layer inside a block (its frozen weight with its deltas)
    a unit of its own, so a process holds one layer whole at a time instead of one block: less
    memory (a Llama MLP projection is ~1/4 of its block), more and smaller all-gathers.

    A model that does not fit one process is built on the meta device (``with torch.device("meta")``,
    then ``trimtune.apply``), sharded here without memory, then materialised by the caller:
    ``model.to_empty(device=...)`` and each rank filling its slices (``set_model_state_dict`` from a
    checkpoint, or an init), non-persistent buffers (rotary frequencies) included.
    """
    if not dist.is_initialized():
        raise ConfigError("shard_model needs a process group: launch with torchrun and call init_distributed() first")
    if is_sharded(model):
        raise ConfigError(f"{type(model).__name__} is already sharded (shard_model was called on it before)")
    blocks = block_modules(model, block_classes)
    if not blocks:
        raise ConfigError(
            f"shard_model found no transformer block in {type(model).__name__} (model type {model_type(model)!r}): pass "
            f"block_classes=[YourBlockClass] (the repeated layer type); the architecture table knows the blocks of "
            f"{', '.join(model_types(lambda arch: arch.block_class))}"
        )
    check_replicated(model)  # before any mesh or group is made: a refusal leaves nothing half-built
    if mesh is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(device, (dist.get_world_size(),))
    store_4bit_bases_plain(model)
    inner = layers_inside(model, blocks) if layer_units else []
    for unit in [*embedding_units(model), *inner, *blocks]:  # inner units first: FSDP2 nests from the leaves up
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def layers_inside(model: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """The wrapped layers (``TunedLayer``: a frozen weight with its deltas) inside ``blocks``."""
    inside = {id(m) for b in blocks for m in b.modules()}
    return [layer for _, layer in layers(model) if id(layer) in inside]


def embedding_units(model: nn.Module) -> list[nn.Module]:
    """The input embedding and the output head as units of their own (a Hugging Face model's
    ``get_input_embeddings`` / ``get_output_embeddings``), so that they are whole only while they
    run rather than for the root's entire forward and backward; none when they share a tied weight
    (one parameter cannot sit in two units: both then stay in the root)."""
    units = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if isinstance(module, nn.Module) and next(module.parameters(recurse=True), None) is not None:
            units.append(module)
    if len(units) == 2:
        first, second = ({id(p) for p in u.parameters()} for u in units)
        if first & second:
            return []
    return units


def store_4bit_bases_plain(model: nn.Module) -> list[str]:
    """Make every 4-bit (QLoRA) base shardable: bitsandbytes' ``Params4bit`` carries its block
    scales as a Python attribute, which FSDP2's sharding and all-gather drop; stored as plain frozen
    tensors (packed codes and scales, ``core/plain_four_bit.py``) both are sharded like any other
    parameter and the layer rebuilds the quantisation state around the gathered ones in its forward.
    Returns the names of the layers changed."""
    packed = [(name, layer) for name, layer in layers(model) if is_4bit(layer.weight)]
    for _, layer in packed:
        store_plain(layer)
    return [name for name, _ in packed]


@torch.no_grad()
def check_replicated(model: nn.Module) -> None:
    """Raise if the ranks do not hold the same parameters and buffers (e.g. a pruning mask drawn
    without a seed): FSDP2 shards rank r's copy as rank r's slice, so differing copies would
    silently mix. Compares one checksum per tensor across ranks."""
    # meta tensors (a model built on the meta device, materialised after sharding) have no values yet
    named = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if not isinstance(t, DTensor) and not t.is_meta]
    if not named:
        return
    sums = torch.stack([t.detach().double().sum() + t.detach().double().abs().sum() for _, t in named])
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = [n for (n, _), a, b in zip(named, low.tolist(), high.tolist()) if a != b]
    if differ:
        raise ValueError(
            f"the processes hold different values for {len(differ)} tensor(s), e.g. {differ[:3]}: build the model, "
            "its adapters and masks identically on every rank (same seed) before shard_model"
        )


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: a DTensor is gathered from every rank (collective), others pass through."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def average_replicated_gradients(model: nn.Module) -> None:
    """All-reduce (mean) the gradients of trainable parameters FSDP does not manage.

    Parameters created after ``shard_model`` (the kept values of a diff after ``project_diffs``)
    are plain tensors, whole on every rank; FSDP does not reduce their gradients, so without this
    the ranks would drift apart. A no-op on an unsharded model or when there are none."""
    if not (dist.is_available() and dist.is_initialized()) or not is_sharded(model):
        return
    for param in model.parameters():
        if param.requires_grad and param.grad is not None and not isinstance(param, DTensor):
            dist.all_reduce(param.grad)  # a sum: gloo has no AVG
            param.grad.div_(dist.get_world_size())
