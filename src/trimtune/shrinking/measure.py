"""What a model costs: parameters, multiply-accumulates (counted by trimtune), latency, file size.

MACs count the weight layers (linear, convolution, GPT-2 Conv1D; wrapped or not) from the shapes seen
in one forward pass: ``output elements × fan-in``. Attention's two matmuls are counted too when the
model is a supported transformer (``2 · seq² · heads · head_dim`` per layer), since head pruning
removes them. Embedding lookups and norms count as zero.
"""

from __future__ import annotations

import statistics
import time

import torch
from safetensors.torch import save
from torch import nn

from ..core.layer_kinds import kind_class_for
from ..core.tuned_layer import TunedLayer
from .transformer_groups import layer_widths, supports


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fan_in(module: nn.Module) -> int:
    shell = module.base_layer if isinstance(module, TunedLayer) else module
    if isinstance(shell, nn.Embedding):
        return 0
    if isinstance(shell, nn.modules.conv._ConvNd):
        return (shell.in_channels // shell.groups) * int(torch.tensor(shell.kernel_size).prod())
    return int(kind_class_for(shell)(shell).weight_shape(module.weight)[1])


def count_macs(model: nn.Module, example_inputs: tuple | dict) -> int:
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        out = output[0] if isinstance(output, tuple) else output
        total += out.numel() * _fan_in(module)

    # Base layers inside a TunedLayer are not submodules, so each weight layer is hooked once.
    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if kind_class_for(module.base_layer if isinstance(module, TunedLayer) else module) is not None
    ]
    try:
        with torch.no_grad():
            output = _call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total + _attention_macs(model, example_inputs, output)


def _call(model, example_inputs):
    return model(**example_inputs) if isinstance(example_inputs, dict) else model(*example_inputs)


def _attention_macs(model, example_inputs, output) -> int:
    if not supports(model):
        return 0
    ids = example_inputs["input_ids"] if isinstance(example_inputs, dict) else example_inputs[0]
    batch, seq = ids.shape
    return sum(2 * batch * seq * seq * w["heads"] * w["head_dim"] for w in layer_widths(model))


def latency_ms(model: nn.Module, example_inputs, rounds: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    with torch.no_grad():
        for _ in range(warmup):
            _call(model, example_inputs)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            _call(model, example_inputs)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def file_bytes(model: nn.Module) -> int:
    """Size of the model's state dict as a safetensors file (tied weights stored once)."""
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
    return len(save(tensors))
