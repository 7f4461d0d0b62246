"""Pruning quality and overhead (issue 4). Three parts, each affordable on 2 shared CPU cores:

1. ``cnn``: a LeNet-style CNN on scikit-learn's digits. Test accuracy at 50 / 80 / 90 % global
   unstructured sparsity, one-shot vs iterative vs gradual (cubic), each with the same masked
   fine-tuning budget; and 50 % output-channel pruning.
2. ``minilm``: all-MiniLM-L6-v2, magnitude vs Wanda at 50 % unstructured and 2:4: cosine between
   the pruned and dense sentence embeddings on the demo texts, and demo classification accuracy
   after LoRA recovery (LoRA r=8 on query/value + a linear head, trained on the demo train split).
3. ``overhead``: forward+backward time of a masked MLP, trimtune's wrapper vs torch.nn.utils.prune.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/prune_quality.py [--part cnn|minilm|overhead|all] [--out results.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

from trimtune.demo.prune_digits import CNN_LAYERS, accuracy, digits_split, lenet, train_steps  # noqa: E402
from trimtune.prune import (  # noqa: E402
    Magnitude,
    PruneConfig,
    Pruner,
    PruneSchedule,
    Wanda,
    collect_input_norms,
    prune,
    sparsity,
)


# ---------------------------------------------------------------- CNN on digits
def cnn_part(finetune_steps: int = 300, dense_steps: int = 1500) -> dict:
    torch.manual_seed(0)
    train, test = digits_split()
    dense = train_steps(lenet(), train, dense_steps)
    results = {"dense": accuracy(dense, test), "rows": []}
    config = PruneConfig(scope="global", targets=CNN_LAYERS, protect=[])
    for target in (0.5, 0.8, 0.9):
        row = {"sparsity": target}
        model = prune(copy.deepcopy(dense), config, sparsity=target)
        row["one-shot, no FT"] = accuracy(model, test)
        row["one-shot + FT"] = accuracy(train_steps(model.requires_grad_(True), train, finetune_steps), test)
        for style in ("iterative", "cubic"):
            model = copy.deepcopy(dense)
            schedule = PruneSchedule(target, style, begin=0, end=int(finetune_steps * 0.6), rounds=3, every=10)
            train_steps(model, train, finetune_steps, pruner=Pruner(model, config, schedule))
            assert abs(sparsity(model) - target) < 1e-3
            row[f"{style} + FT"] = accuracy(model, test)
        results["rows"].append(row)
        print(f"  cnn {row}", file=sys.stderr, flush=True)
    model = prune(copy.deepcopy(dense), PruneConfig(amount=0.5, granularity="out", targets=["0", "2", "6"]))
    channels = {"no FT": accuracy(model, test)}
    channels["FT"] = accuracy(train_steps(model.requires_grad_(True), train, finetune_steps), test)
    results["channels_50"] = channels
    return results


# ---------------------------------------------------------------- MiniLM
class MeanPooledClassifier(nn.Module):
    def __init__(self, encoder, labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, labels)

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids, attention_mask))


def _batches(tokenizer, records, labels, size=32):
    for i in range(0, len(records), size):
        chunk = records[i:i + size]
        enc = tokenizer([r["text"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
        yield {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([labels.index(r["label"]) for r in chunk])


@torch.no_grad()
def _embeddings(model, batches):
    model.eval()
    return torch.cat([model.embed(**inputs) for inputs, _ in batches])


def _lora_recover(model, train_batches, test_batches, epochs: int, seed: int = 0) -> float:
    import trimtune

    torch.manual_seed(seed)
    trimtune.apply(model, trimtune.LoraConfig(r=8, alpha=16, targets=r"encoder\..*(query|value)"))
    model.head.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(epochs):
        model.train()
        for inputs, labels in train_batches:
            loss = F.cross_entropy(model(**inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(**inputs).argmax(1) == labels).sum()) for inputs, labels in test_batches)
    return correct / sum(len(labels) for _, labels in test_batches)


def minilm_part(epochs: int = 3, calibration: int = 64) -> dict:
    from transformers import AutoModel, AutoTokenizer

    from trimtune.data.demo_texts import DEMO_LABELS, demo_split
    from trimtune.models import minilm_path

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_records, test_records = demo_split()
    train_batches = list(_batches(tokenizer, train_records, DEMO_LABELS))
    test_batches = list(_batches(tokenizer, test_records, DEMO_LABELS))
    all_batches = train_batches + test_batches

    def fresh():
        torch.manual_seed(0)
        return MeanPooledClassifier(AutoModel.from_pretrained(path).eval(), len(DEMO_LABELS))

    dense = fresh()
    reference = _embeddings(dense, all_batches)
    targets = r"encoder\..*(query|key|value|dense)"
    calibration_inputs = [inputs for inputs, _ in train_batches][: max(1, calibration // 32)]
    results = {"dense accuracy after LoRA": _lora_recover(fresh(), train_batches, test_batches, epochs), "rows": []}
    for granularity, label in (("element", "50 % unstructured"), ("2:4", "2:4")):
        for method in ("magnitude", "wanda"):
            model = fresh()
            if method == "wanda":
                norms = collect_input_norms(model.encoder, calibration_inputs, targets=targets)
                importance = Wanda(norms)
            else:
                importance = Magnitude()
            prune(model.encoder, PruneConfig(amount=0.5, importance=importance, granularity=granularity, targets=targets))
            cosine = F.cosine_similarity(_embeddings(model, all_batches), reference, dim=-1)
            results["rows"].append({
                "pattern": label, "importance": method, "sparsity": sparsity(model),
                "cosine mean": float(cosine.mean()), "cosine min": float(cosine.min()),
                "accuracy after LoRA": _lora_recover(model, train_batches, test_batches, epochs),
            })
            print(f"  minilm {results['rows'][-1]}", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- overhead
def overhead_part(width: int = 512, depth: int = 3, batch: int = 64) -> dict:
    import torch.nn.utils.prune as tprune

    def build():
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)])

    ours, theirs = build(), build()
    prune(ours, PruneConfig(amount=0.8, targets=[f"{i}.0" for i in range(depth)]))
    for p in ours.parameters():
        p.requires_grad_(True)
    for i in range(depth):
        tprune.l1_unstructured(theirs[i][0], "weight", 0.8)
    x = torch.randn(batch, width)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        return run

    timings = _harness.time_variants({"trimtune": step(ours), "torch.nn.utils.prune": step(theirs)}, rounds=15)
    return {
        "trimtune ms": timings["trimtune"].median_ms,
        "torch prune ms": timings["torch.nn.utils.prune"].median_ms,
        "ratio": _harness.ratio(timings["trimtune"], timings["torch.nn.utils.prune"]),
    }


# ---------------------------------------------------------------- report
def markdown(results: dict) -> str:
    lines = []
    if "cnn" in results:
        cnn = results["cnn"]
        lines.append(f"CNN on digits, dense test accuracy {100 * cnn['dense']:.1f} %\n")
        keys = ["one-shot, no FT", "one-shot + FT", "iterative + FT", "cubic + FT"]
        rows = [[f"{int(100 * r['sparsity'])} %"] + [f"{100 * r[k]:.1f}" for k in keys] for r in cnn["rows"]]
        lines.append(_harness.markdown_table(["sparsity"] + keys, rows))
        ch = cnn["channels_50"]
        lines.append(f"\n50 % output channels (conv1, conv2, fc1): {100 * ch['no FT']:.1f} % before, {100 * ch['FT']:.1f} % after fine-tuning\n")
    if "minilm" in results:
        m = results["minilm"]
        lines.append(f"all-MiniLM-L6-v2, demo accuracy of the dense model after LoRA: {100 * m['dense accuracy after LoRA']:.1f} %\n")
        rows = [[r["pattern"], r["importance"], f"{r['cosine mean']:.4f}", f"{r['cosine min']:.4f}", f"{100 * r['accuracy after LoRA']:.1f}"] for r in m["rows"]]
        lines.append(_harness.markdown_table(["pattern", "importance", "cosine mean", "cosine min", "accuracy after LoRA %"], rows))
    if "overhead" in results:
        o = results["overhead"]
        lines.append(f"\nforward+backward, 3x Linear(512) at 80 %: trimtune {o['trimtune ms']:.2f} ms, "
                     f"torch.nn.utils.prune {o['torch prune ms']:.2f} ms, ratio {o['ratio']:.2f}x\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("cnn", "minilm", "overhead", "all"), default="all")
    parser.add_argument("--out", default="prune_quality.json")
    args = parser.parse_args(argv)
    _harness.set_threads()
    parts = {"cnn": cnn_part, "minilm": minilm_part, "overhead": overhead_part}
    results = {}
    for name, run in parts.items():
        if args.part in (name, "all"):
            start = time.perf_counter()
            results[name] = run()
            results[name]["seconds"] = time.perf_counter() - start
            print(f"{name}: {results[name]['seconds']:.0f} s", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
