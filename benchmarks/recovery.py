"""Recovering a pruned MiniLM on the demo reviews, with and without distillation from the dense model.

Per split seed: the dense model is all-MiniLM-L6-v2 (mean pooling) tuned with LoRA (r=8, query|value,
classifier trained), 12 epochs — the demo's setting. It is merged; that dense model is both the
teacher and where every pruned student starts:

- shrink 25 % / 50 % of heads and FFN units per layer (by magnitude, removed for real), then LoRA
  (same settings) with plain task loss, or with distillation (KL at T=2, alpha=0.5, from the dense model);
- Wanda 2:4 (8 calibration batches) on every encoder Linear, then LoRA with ``follow_mask`` (stays 2:4),
  without / with distillation.

Also times a distillation step against a plain step (same batch, 2 threads unless --threads) and
reports peak RSS of each in a fresh child.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/recovery.py --threads 1 --seeds 0 1 2 3 4
    ... --quick                          # seconds: 32 examples, 1 epoch
    ... --step-only                      # only the step time / memory comparison
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _harness import markdown_table, set_threads  # noqa: E402

import trimtune as tt  # noqa: E402
from trimtune.data import DEMO_LABELS, demo_split, text_loader  # noqa: E402
from trimtune.prune import PruneConfig, Wanda, collect_input_norms, prune  # noqa: E402

LORA = dict(r=8, alpha=16, targets="query|value", modules_to_save=["classifier"])
DISTILL = dict(alpha=0.5, temperature=2.0)
ENCODER_LINEARS = r"encoder\.layer\.\d+\..*(query|key|value|dense)$"  # every Linear of the 6 blocks
VARIANTS = ["dense LoRA", "shrink 25 %", "shrink 25 % + distill", "shrink 50 %", "shrink 50 % + distill",
            "Wanda 2:4", "Wanda 2:4 + distill"]


def data(seed: int, quick: bool):
    from transformers import AutoTokenizer

    from trimtune.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train, test = demo_split(seed=seed)
    if quick:
        train, test = train[:32], test[:32]
    return tokenizer, text_loader(train, tokenizer, DEMO_LABELS, 16, shuffle=True, seed=seed), text_loader(test, tokenizer, DEMO_LABELS, 64)


def tune(model, loader, test, epochs: int, teacher=None) -> float:
    """LoRA (follow_mask on pruned layers) for ``epochs``, distilling from ``teacher`` when given."""
    tt.apply(model, tt.LoraConfig(**LORA, follow_mask=True))
    callbacks = [tt.Distiller(model, teacher, tt.DistillConfig(**DISTILL))] if teacher is not None else []
    tt.train(model, loader, epochs=epochs, lr=1e-3, scheduler=tt.linear_schedule(), callbacks=callbacks, progress=False)
    return tt.evaluate(model, test, tt.accuracy)["accuracy"]


def dense_model(loader, test, epochs: int):
    from trimtune.models import minilm_classifier

    model = minilm_classifier(len(DEMO_LABELS))
    accuracy = tune(model, loader, test, epochs)
    tt.merge(model)
    return tt.unload(model, merge_adapters=True).eval(), accuracy


def inputs_of(loader) -> dict:
    batch = next(iter(loader))
    return {k: v for k, v in batch.items() if k != "labels"}


def shrunk(dense, ratio: float, loader):
    model = copy.deepcopy(dense)
    tt.shrink(model, ratio, example_inputs=inputs_of(loader), measure=False)
    return model


def two_four(dense, loader):
    model = copy.deepcopy(dense)
    batches = [inputs_of([b]) for b, _ in zip(loader, range(8))]
    norms = collect_input_norms(model, batches, targets=ENCODER_LINEARS)
    prune(model, PruneConfig(amount=0.5, importance=Wanda(norms), granularity="2:4", targets=ENCODER_LINEARS))
    return model


def one_seed(seed: int, epochs: int, quick: bool) -> dict:
    torch.manual_seed(seed)
    tokenizer, loader, test = data(seed, quick)
    dense, dense_acc = dense_model(loader, test, epochs)
    results = {"dense LoRA": dense_acc}
    students = {"shrink 25 %": lambda: shrunk(dense, 0.25, loader), "shrink 50 %": lambda: shrunk(dense, 0.5, loader),
                "Wanda 2:4": lambda: two_four(dense, loader)}
    for name, make in students.items():
        for distill in (False, True):
            torch.manual_seed(seed)
            start = time.perf_counter()
            student = make()
            label = name + (" + distill" if distill else "")
            if not distill:
                results[f"{name} (before recovery)"] = tt.evaluate(student, test, tt.accuracy)["accuracy"]
            results[label] = tune(student, loader, test, epochs, teacher=dense if distill else None)
            print(f"seed {seed} {label}: {results[label]:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def step_costs(threads: int) -> dict:
    """Median wall time of a plain LoRA step and a distillation step on the same batch (MiniLM, 16 x 64)."""
    from trimtune.models import minilm_classifier
    from trimtune.training.batches import run_batch

    torch.manual_seed(0)
    set_threads(threads)
    teacher = minilm_classifier(len(DEMO_LABELS)).eval()
    batch = {"input_ids": torch.randint(1000, 20000, (16, 64)), "attention_mask": torch.ones(16, 64, dtype=torch.long),
             "labels": torch.randint(0, 4, (16,))}
    out = {}
    for variant in ("plain", "distill"):
        model = copy.deepcopy(teacher)
        tt.apply(model, tt.LoraConfig(**LORA))
        distiller = tt.Distiller(model, teacher, tt.DistillConfig(**DISTILL)) if variant == "distill" else None
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step():
            output = run_batch(model, batch)
            loss = output.loss + (distiller.distill_term(batch, output) if distiller else 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        times = []
        for _ in range(7):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        out[f"{variant}_ms"] = 1000 * statistics.median(times)
    out["ratio"] = out["distill_ms"] / out["plain_ms"]
    return out


def peak_rss(variant: str, threads: int) -> float:
    """Peak RSS (MB) of a child process that runs 5 steps of ``variant``."""
    import subprocess

    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import recovery, resource; recovery.steps_only({variant!r}, {threads}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ})
    return float(done.stdout.strip().splitlines()[-1])


def steps_only(variant: str, threads: int) -> None:
    from trimtune.models import minilm_classifier
    from trimtune.training.batches import run_batch

    torch.manual_seed(0)
    set_threads(threads)
    teacher = minilm_classifier(len(DEMO_LABELS)).eval()
    model = copy.deepcopy(teacher) if variant == "distill" else teacher
    tt.apply(model, tt.LoraConfig(**LORA))
    distiller = tt.Distiller(model, teacher, tt.DistillConfig(**DISTILL)) if variant == "distill" else None
    batch = {"input_ids": torch.randint(1000, 20000, (16, 64)), "attention_mask": torch.ones(16, 64, dtype=torch.long),
             "labels": torch.randint(0, 4, (16,))}
    for _ in range(5):
        output = run_batch(model, batch)
        loss = output.loss + (distiller.distill_term(batch, output) if distiller else 0)
        loss.backward()


def summary(per_seed: dict[int, dict]) -> str:
    rows = []
    names = [n for n in next(iter(per_seed.values()))]
    for name in names:
        values = [100 * r[name] for r in per_seed.values()]
        rows.append([name, f"{statistics.mean(values):.1f}", f"{min(values):.1f} – {max(values):.1f}", " ".join(f"{v:.1f}" for v in values)])
    return markdown_table(["variant", "test accuracy % mean", "min – max", "per seed " + ",".join(map(str, per_seed))], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--step-only", action="store_true")
    parser.add_argument("--json", help="write the per-seed results here")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.step_only:
        costs = step_costs(args.threads)
        costs.update({f"peak_mb_{v}": peak_rss(v, args.threads) for v in ("plain", "distill")})
        print(json.dumps(costs, indent=1))
        return
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = one_seed(seed, 1 if args.quick else args.epochs, args.quick)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(per_seed, f, indent=1)
    print(summary(per_seed))


if __name__ == "__main__":
    main()
