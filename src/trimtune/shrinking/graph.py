"""Coupled groups of channels, found by tracing the model with torch.fx.

Removing output channel i of a convolution or linear layer removes input channel i of everything
that reads it, and everything coupled to it: norm layers on the way, depthwise convolutions, the
other branches of a residual addition (they must drop the same channel), offsets into a
concatenation, and the ``C·H·W`` features a flatten makes of it. A ``Group`` lists every such slice;
it is the unit of pruning (Torch-Pruning's model, rebuilt on fx so each op is explicit).

Transformers' attention reshapes channels into heads, which a channel trace cannot see through;
HF models get their groups from ``transformer_groups.py`` instead.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..core.layer_kinds import kind_class_for
from ..core.modules_to_save import ModuleCopies
from ..core.tuned_layer import TunedLayer
from ..core.slicing import _NORMS, is_depthwise


class UntraceableError(RuntimeError):
    """The dependency tracer met an op it cannot follow."""


@dataclass(frozen=True)
class IndexMap:
    """Group index i -> member indices ``(i + offset) * expand + [0, expand)``; a cat after a flatten
    composes as ``steps``."""

    steps: tuple[tuple[int, int], ...] = ()  # (offset, expand) applied in order

    def then(self, offset: int = 0, expand: int = 1) -> IndexMap:
        return IndexMap(self.steps + ((offset, expand),))

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        for offset, expand in self.steps:
            idx = ((idx + offset)[:, None] * expand + torch.arange(expand)).flatten()
        return idx


@dataclass
class Member:
    module: str
    dim: str  # "out", "in" or "channel" (norms, depthwise convs)
    index_map: IndexMap = field(default_factory=IndexMap)


@dataclass
class Group:
    """Slices that must be removed together; ``size`` units, each ``unit`` channels wide (1, or a head)."""

    members: list[Member]
    size: int
    unit: int = 1
    name: str = ""
    blocked: str = ""  # why this group cannot be pruned (reaches the model output, a protected layer, ...)

    def root(self) -> Member:
        return next(m for m in self.members if m.dim == "out")


_PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.Hardswish, nn.Hardtanh,
    nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_PASSTHROUGH_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.gelu, nn.functional.silu,
    nn.functional.dropout, nn.functional.max_pool2d, nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_avg_pool1d, nn.functional.leaky_relu, nn.functional.hardswish, nn.functional.relu6,
}
_PASSTHROUGH_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "to", "relu_"}
_BINARY = {operator.add, operator.iadd, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module, qualified_name):
        return isinstance(module, (TunedLayer, ModuleCopies)) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module, example_inputs: tuple) -> torch.fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types; the message is what matters
        raise UntraceableError(
            f"torch.fx cannot trace {type(model).__name__}: {err}. Hugging Face transformers of the known types "
            "(core/architectures.py) are shrunk from their block layout without tracing; for other models, make the "
            "forward traceable (no data-dependent control flow), or prune with masks instead (prune + a structured granularity)"
        ) from err
    module = torch.fx.GraphModule(model, graph)
    ShapeProp(module).propagate(*example_inputs)
    return module


class _Propagation:
    """Walk the fx graph from one producer, collecting every coupled slice."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.members: dict[tuple[str, str, IndexMap], Member] = {}
        self.seen: set[tuple[str, str, IndexMap]] = set()
        self.blocked = ""

    def module(self, node):
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def add(self, node, dim, index_map):
        key = (node.target, dim, index_map)
        if key not in self.members:
            self.members[key] = Member(node.target, dim, index_map)

    def visit(self, node, direction, index_map):
        key = (node.name, direction, index_map)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    # ---- downstream: who reads these channels ----
    def downstream(self, node, index_map):
        if not self.visit(node, "down", index_map):
            return
        for user in node.users:
            self.consume(user, node, index_map)

    def consume(self, user, source, index_map):
        module = self.module(user)
        if user.op == "output":
            self.blocked = "its channels are part of the model output"
        elif module is not None and is_depthwise(module):
            self.add(user, "channel", index_map)
            self.downstream(user, index_map)
        elif module is not None and _linear_like(module):
            self.add(user, "in", index_map)
        elif module is not None and isinstance(module, _NORMS):
            self.add(user, "channel", index_map)
            self.downstream(user, index_map)
        elif _is_passthrough(user, module):
            self.downstream(user, index_map)
        elif _is_binary(user):
            self.downstream(user, index_map)
            for other in _tensor_args(user):
                if other is not source:
                    self.upstream(other, index_map)
        elif _is_cat(user):
            offset = 0
            for arg in user.args[0]:
                if arg is source:
                    break
                offset += _channels(arg)
            self.downstream(user, index_map.then(offset=offset))
        elif _is_flatten(user):
            shape = source.meta["tensor_meta"].shape
            self.downstream(user, index_map.then(expand=int(torch.tensor(shape[2:]).prod().item()) if len(shape) > 2 else 1))
        else:  # an op whose channel mapping is unknown: removing these channels could break it, so keep them
            self.blocked = self.blocked or f"its channels reach {user.op} {user.target!r} (node {user.name}), which shrink cannot follow"

    # ---- upstream: who else writes these channels (through a residual add) ----
    def upstream(self, node, index_map):
        if not self.visit(node, "up", index_map):
            return
        module = self.module(node)
        if node.op == "placeholder":
            self.blocked = "its channels come from the model input"
        elif module is not None and _linear_like(module) and not is_depthwise(module):
            self.add(node, "out", index_map)
        elif module is not None and (isinstance(module, _NORMS) or is_depthwise(module)):
            self.add(node, "channel", index_map)
            self.upstream(node.args[0], index_map)
        elif _is_passthrough(node, module):
            self.upstream(node.args[0], index_map)
        elif _is_binary(node):
            for arg in _tensor_args(node):
                self.upstream(arg, index_map)
        else:
            raise UntraceableError(
                f"cannot follow channels back through {node.op} {node.target!r} (node {node.name}), "
                "e.g. a residual addition fed by a concatenation; protect the layers around it"
            )
        self.downstream(node, index_map)


def _linear_like(module) -> bool:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    return kind_class_for(shell) is not None and not isinstance(shell, nn.Embedding)


def _is_passthrough(node, module) -> bool:
    if module is not None:
        return isinstance(module, _PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in _PASSTHROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in _PASSTHROUGH_METHODS


def _tensor_args(node) -> list:
    return [a for a in node.args if isinstance(a, torch.fx.Node) and "tensor_meta" in a.meta]


def _is_binary(node) -> bool:
    binary = (node.op == "call_function" and node.target in _BINARY) or (
        node.op == "call_method" and node.target in _BINARY_METHODS
    )
    return binary and len(_tensor_args(node)) == 2


def _channel_dim_ok(node, dim) -> bool:
    rank = len(node.meta["tensor_meta"].shape)
    return dim % rank == 1


def _is_cat(node) -> bool:
    if node.op != "call_function" or node.target not in (torch.cat, torch.concat):
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if not _channel_dim_ok(node, dim):
        raise UntraceableError(f"concatenation along dim {dim} (node {node.name}) is not along channels")
    return True


def _is_flatten(node) -> bool:
    if node.op == "call_module" or node.target not in (torch.flatten, "flatten", "view", "reshape"):
        return False
    shape = node.meta["tensor_meta"].shape
    return len(shape) == 2  # (N, C*H*W): features are channel-major, as flatten(1) makes them


def _channels(node) -> int:
    return int(node.meta["tensor_meta"].shape[1])


def channel_groups(model: nn.Module, example_inputs: tuple) -> list[Group]:
    """Every group of coupled channel slices in ``model``, one per independent set of producers."""
    gm = trace(model, example_inputs)
    # nn.Flatten is a module in fx; treat it like torch.flatten
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten):
            node.op, node.target = "call_function", torch.flatten
    groups, claimed = [], set()
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if module is None or not _linear_like(module) or is_depthwise(module) or node.target in claimed:
            continue
        walk = _Propagation(gm)
        walk.upstream(node, IndexMap())
        members = list(walk.members.values())
        claimed.update(m.module for m in members if m.dim == "out")
        shell = module.base_layer if isinstance(module, TunedLayer) else module
        size = int(kind_class_for(shell)(shell).weight_shape(module.weight)[0])
        groups.append(Group(members, size=size, name=node.target, blocked=walk.blocked))
    return groups
