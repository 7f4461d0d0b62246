"""Demo step: prune a small CNN on scikit-learn's digits to 80 % sparsity and recover it.

Trains a LeNet-style CNN, prunes it gradually (cubic schedule, global magnitude) while fine-tuning
with the masks enforced, prints the per-layer sparsity report, and saves it sparse. The helpers
here (data, model, training loop) are shared with ``benchmarks/prune_quality.py``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import trimtune as tt

from ..data.digits import load_digits_split
from .context import DemoContext, Step

CNN_LAYERS = ["0", "2", "6", "8"]


def digits_split(seed: int = 0):
    """((x_train, y_train), (x_test, y_test)): 8x8 digit images in [0, 1], stratified 70/30."""
    x_train, y_train, x_test, y_test = load_digits_split(test_fraction=0.3, seed=seed)
    return (x_train, y_train), (x_test, y_test)


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def train_steps(model: nn.Module, data, steps: int, lr: float = 1e-3, seed: int = 0, pruner: tt.Pruner | None = None) -> nn.Module:
    """Adam on random mini-batches of 64; every weight trains, masks stay enforced (``keep_pruned``);
    with a ``pruner`` the schedule prunes before each step."""
    x, y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    tt.keep_pruned(optimizer, model)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        if pruner is not None and pruner.step(step):
            model.requires_grad_(True)  # pruning wraps layers; masked fine-tuning trains the base weights
        batch = torch.randint(0, len(y), (64,), generator=generator)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    x, y = data
    return float((model.eval()(x).argmax(1) == y).float().mean())


def run(ctx: DemoContext) -> None:
    torch.manual_seed(ctx.seed)
    dense_steps, finetune_steps = (120, 50) if ctx.quick else (1500, 300)
    train, test = digits_split(ctx.seed)
    dense = train_steps(lenet(), train, dense_steps, seed=ctx.seed)
    ctx.detail(f"  data: {len(train[1])} train / {len(test[1])} test digit images; LeNet-style CNN, {dense_steps} steps")
    config = tt.PruneConfig(scope="global", targets=CNN_LAYERS, protect=[])
    one_shot = tt.prune(copy.deepcopy(dense), config, sparsity=0.8)
    model = copy.deepcopy(dense)
    schedule = tt.PruneSchedule(0.8, "cubic", begin=0, end=int(finetune_steps * 0.6), every=10)
    train_steps(model, train, finetune_steps, seed=ctx.seed, pruner=tt.Pruner(model, config, schedule))
    report = tt.sparsity_report(model)
    sizes = tt.save_sparse(model, ctx.out_dir / "digits_cnn_sparse.safetensors")
    figures = {
        "dense": accuracy(dense, test), "one_shot_no_finetune": accuracy(one_shot, test),
        "gradual_with_finetune": accuracy(model, test), "sparsity": tt.sparsity(model),
        "sparse_bytes": sizes["sparse_bytes"], "dense_bytes": sizes["dense_bytes"],
    }
    ctx.detail(report.table())
    ctx.report(f"  dense test accuracy:                        {figures['dense']:.1%}")
    ctx.report(f"  80 % one-shot magnitude, no fine-tuning:    {figures['one_shot_no_finetune']:.1%}")
    ctx.report(f"  80 % gradual (cubic) with masked fine-tune: {figures['gradual_with_finetune']:.1%}")
    ctx.report(f"  saved sparse: {sizes['sparse_bytes'] / 1024:.0f} KiB vs {sizes['dense_bytes'] / 1024:.0f} KiB dense")
    ctx.results["prune_digits"] = figures


STEP = Step("prune_digits", "Pruning a CNN on digits to 80 % sparsity with masked fine-tuning", run)
