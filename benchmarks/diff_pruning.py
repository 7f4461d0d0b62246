"""Diff pruning against full fine-tuning and LoRA: all-MiniLM-L6-v2 on the demo reviews, and a small CNN on digits.

For each method: test accuracy, trainable and stored parameters, bytes of what a task needs on
disk (full FT: the whole model; LoRA: the adapter tensors; diff: the artifact written by
``save_diff``), and training wall time. Diff pruning follows Guo et al. (2021): a sparsity phase
(dense δ with hard-concrete gates, λ·E[L0] added to the loss, Adam with a large step on the gate
logits), projection to the exact density, then fine-tuning of the kept entries only. MiniLM
classifies from the mean of its token states (``trimtune.models.MeanPoolClassifier``: the
pooling it was trained for); each seed is its own train/test split of the reviews and its own
head initialisation. Every method: AdamW, linear decay after a one-epoch warm-up (per phase).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/diff_pruning.py --threads 1 --seeds 3    # both tasks, all methods
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/diff_pruning.py --threads 1 --task minilm --methods diff0.5 --lr-diff 1e-4 1e-3 --lr-kept 3e-3 1e-2

Several values of an ``--lr-*`` flag sweep it; several ``--lr-kept`` share one sparsity phase per ``--lr-diff``.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

import trimtune as tt
from trimtune.demo.lora_text import text_schedule
from trimtune.methods.diff.artifact import artifact_bytes, save_diff
from trimtune.methods.diff.penalty import DiffPenalty, diff_optimizer
from trimtune.models import minilm_path
from trimtune.training import train
from trimtune.training.evaluate import accuracy, evaluate


@dataclass
class Task:
    name: str
    build: callable  # seed -> base model (pretrained weights, fresh task head)
    train_data: list
    test_data: list
    head: str  # the task head: trained in full by every method
    lora: tt.LoraConfig
    diff_targets: object  # DiffConfig targets
    epochs: int
    lr_full: float
    lr_lora: float
    lr_diff: float  # sparsity phase (dense δ)
    lr_kept: float  # fixed-mask phase: few entries left, larger steps
    loss_fn: callable = None  # None: the model returns .loss (HF batches with labels)
    penalty_weight: float = 1e-7  # λ on the expected L0 (a sum over entries: scale it with their number)


@dataclass
class Row:
    task: str
    method: str
    seed: int
    accuracy: float
    trainable: int
    stored: int
    task_bytes: int
    dense_bytes: int
    seconds: float


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return len(safetensors_bytes({k: v.detach().contiguous() for k, v in tensors.items()}))


def fit(model, task: Task, lr: float, epochs: int, callbacks=()) -> float:
    start = time.perf_counter()
    train(model, task.train_data, epochs=epochs, optimizer=diff_optimizer(model, lr), scheduler=text_schedule(epochs, task.train_data),
          callbacks=callbacks, loss_fn=task.loss_fn, progress=False)
    return time.perf_counter() - start


def score(model, task: Task) -> float:
    return evaluate(model, task.test_data, {"accuracy": accuracy}, loss_fn=task.loss_fn)["accuracy"]


def run_full(task: Task, seed: int, dense_bytes: int) -> Row:
    model = task.build(seed)
    for p in model.parameters():
        p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters())
    seconds = fit(model, task, task.lr_full, task.epochs)
    return Row(task.name, f"full FT, lr {task.lr_full:g}", seed, score(model, task), trainable, trainable, dense_bytes, dense_bytes, seconds)


def run_lora(task: Task, seed: int, dense_bytes: int) -> Row:
    model = task.build(seed)
    tt.apply(model, task.lora, "task")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    seconds = fit(model, task, task.lr_lora, task.epochs)
    stored = sum(p.numel() for p in trainable.values())
    return Row(task.name, f"LoRA r={task.lora.r}, lr {task.lr_lora:g}", seed, score(model, task), stored, stored, tensor_bytes(trainable), dense_bytes, seconds)


def run_diff(task: Task, seed: int, dense_bytes: int, density: float, penalty_weight: float, kept_lrs: list[float], **options) -> list[Row]:
    """One sparsity phase and projection, then one fixed-mask phase per lr in ``kept_lrs`` (each from
    a copy of the projected model), so a kept-phase lr sweep shares the costly dense phase.
    ``options``: more ``DiffConfig`` fields (group, embeddings)."""
    model = task.build(seed)
    tt.apply(model, tt.DiffConfig(density=density, targets=task.diff_targets, modules_to_save=[task.head], **options), "task")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sparsity_epochs = max(1, task.epochs // 2)
    seconds = fit(model, task, task.lr_diff, sparsity_epochs, callbacks=[DiffPenalty(penalty_weight)])
    tt.project_diffs(model)
    rows = []
    for lr_kept in kept_lrs:
        kept = copy.deepcopy(model) if len(kept_lrs) > 1 else model
        torch.manual_seed(seed + 1)  # the same dropout draws whichever lrs run before this one
        kept_seconds = fit(kept, task, lr_kept, task.epochs - sparsity_epochs)
        stored = sum(p.numel() for p in kept.parameters() if p.requires_grad)
        with tempfile.TemporaryDirectory() as tmp:
            save_diff(kept, Path(tmp) / "diff", "task")
            size = artifact_bytes(Path(tmp) / "diff")
        method = f"diff {density:.1%}, lr {task.lr_diff:g}/{lr_kept:g}"
        method += "".join(f", {k}={v}" for k, v in options.items() if v not in ("none", False))
        rows.append(Row(task.name, method, seed, score(kept, task), trainable, stored, size, dense_bytes, seconds + kept_seconds))
    return rows


# ---- the two tasks ----
def minilm_task(seed: int, batch_size: int = 16) -> Task:
    """The demo reviews split by ``seed``; MiniLM with a fresh mean-pooling head."""
    from transformers import AutoTokenizer

    from trimtune.data import DEMO_LABELS, demo_split, text_loader
    from trimtune.models import minilm_classifier

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train_records, test_records = demo_split(seed=seed)
    train_data = list(text_loader(train_records, tokenizer, DEMO_LABELS, batch_size=batch_size, shuffle=True, seed=seed))
    test_data = list(text_loader(test_records, tokenizer, DEMO_LABELS, batch_size=64))

    def build(seed):
        torch.manual_seed(seed)
        return minilm_classifier(len(DEMO_LABELS))

    lora = tt.LoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"])
    # lrs swept on seed 0 (docs/benchmarks.md, "Diff pruning"): full FT {2e-5, 5e-5, 1e-4, 2e-4}, diff
    # sparsity phase {1e-4, 5e-4, 1e-3, 2e-3} x fixed-mask phase {1e-3, 3e-3, 1e-2(, 3e-2)}; LoRA: the demo's.
    return Task("MiniLM / demo reviews", build, train_data, test_data, "classifier", lora, "all-linear", 12, 1e-4, 1e-3, 1e-3, 1e-2)


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def digits_task(seed: int, batch_size: int = 32) -> Task:
    """Base: the CNN pre-trained on digits 0-4 only; task: all ten digits (new head rows to learn).
    The split and the base are fixed (597 test images); ``seed`` varies the head and training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1200], order[1200:]

    def batches(idx):
        return [(images[idx[i : i + batch_size]], labels[idx[i : i + batch_size]]) for i in range(0, len(idx), batch_size)]

    pretrain_idx = train_idx[labels[train_idx] < 5]
    torch.manual_seed(0)
    base = DigitsCNN()
    train(base, batches(pretrain_idx), epochs=15, lr=2e-3, loss_fn=nn.functional.cross_entropy, progress=False)
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def build(seed):
        torch.manual_seed(seed)
        model = DigitsCNN()
        model.load_state_dict(state)
        model.fc2.reset_parameters()  # a fresh task head
        return model

    lora = tt.LoraConfig(r=4, alpha=8, targets=["conv1", "conv2", "fc1"], modules_to_save=["fc2"])
    # lrs and λ swept on seed 0 (docs/benchmarks.md): full FT {1e-3 .. 5e-2}, diff {1e-3 .. 2e-2} x {5e-3 .. 1e-1}, λ {1e-7 .. 1e-2}
    return Task("CNN / digits", build, batches(train_idx), batches(test_idx), "fc2", lora, ["conv1", "conv2", "fc1"], 12, 2e-2, 5e-3, 1e-2, 5e-2,
                nn.functional.cross_entropy, penalty_weight=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["minilm", "digits", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (match OMP_NUM_THREADS)")
    parser.add_argument("--epochs", type=int, help="override the task's epochs (diff: half sparsity phase, half fixed-mask phase)")
    parser.add_argument("--penalty-weight", type=float, help="override the task's λ on the expected L0 (a sum over entries)")
    parser.add_argument("--group", choices=["none", "matrix", "row"], default="none", help="diff: structured L0 gate per tensor or row")
    parser.add_argument("--embeddings", action="store_true", help="diff: also over the embeddings (MiniLM)")
    parser.add_argument("--methods", nargs="+", choices=["full", "lora", "diff5", "diff0.5"], default=["full", "lora", "diff5", "diff0.5"])
    for name in ("full", "lora", "diff", "kept"):
        parser.add_argument(f"--lr-{name}", type=float, nargs="+", help=f"override the task's lr_{name}; several values: a sweep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = {"minilm": [minilm_task], "digits": [digits_task], "both": [minilm_task, digits_task]}[args.task]
    rows = []
    for make in tasks:
        for seed in range(args.seeds):
            task = make(seed)
            if args.epochs is not None:
                task.epochs = args.epochs
            lrs = {name: getattr(args, f"lr_{name}") or [getattr(task, f"lr_{name}")] for name in ("full", "lora", "diff", "kept")}
            dense_bytes = tensor_bytes(task.build(0).state_dict())
            for method in args.methods:
                for lr in lrs["diff" if method.startswith("diff") else method]:
                    setattr(task, "lr_diff" if method.startswith("diff") else f"lr_{method}", lr)
                    weight = task.penalty_weight if args.penalty_weight is None else args.penalty_weight
                    for row in run_method(method, task, seed, dense_bytes, weight, lrs["kept"], group=args.group, embeddings=args.embeddings):
                        rows.append(row)
                        print(f"{row.task:22s} {row.method:30s} seed {seed}  acc {row.accuracy:.3f}  {row.seconds:.0f}s", flush=True)
    print_table(rows)


def run_method(method: str, task: Task, seed: int, dense_bytes: int, penalty_weight: float, kept_lrs: list[float], **options) -> list[Row]:
    if method == "full":
        return [run_full(task, seed, dense_bytes)]
    if method == "lora":
        return [run_lora(task, seed, dense_bytes)]
    return run_diff(task, seed, dense_bytes, {"diff5": 0.05, "diff0.5": 0.005}[method], penalty_weight, kept_lrs, **options)


def print_table(rows: list[Row]) -> None:
    print("\n| task | method | accuracy (mean ± sd) | trainable params | stored params | task bytes | % of dense file | train s |")
    print("|---|---|---|---|---|---|---|---|")
    keys = list(dict.fromkeys((r.task, r.method) for r in rows))
    for task, method in keys:
        group = [r for r in rows if (r.task, r.method) == (task, method)]
        accs = [r.accuracy for r in group]
        mean = sum(accs) / len(accs)
        sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1))
        r = group[0]
        seconds = sum(x.seconds for x in group) / len(group)
        print(
            f"| {task} | {method} | {100 * mean:.1f} ± {100 * sd:.1f} (n={len(group)}) | {r.trainable:,} | {r.stored:,} | "
            f"{r.task_bytes:,} | {100 * r.task_bytes / r.dense_bytes:.2f} % | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
