"""Physical shrink: trimtune vs Torch-Pruning, side by side in one run, at the same ratio.

Cases (50 % of each group's units removed, magnitude importance on both sides):
- ResNet-18-style CIFAR net (3x32x32, random weights): channels;
- LeNet trained on scikit-learn digits: channels (accuracy after pruning, no fine-tuning);
- all-MiniLM-L6-v2: attention heads and FFN units (hidden size kept), embedding cosine to the dense model.
Figures: params, MACs (counted by trimtune's counter for both), CPU latency (batch 16; MiniLM seq 128),
time to prune, quality, and whether the pruned model saves and reloads without pickle.

    python benchmarks/shrink_vs_torch_pruning.py [--quick] [--out docs/benchmarks_shrink.md]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _harness  # noqa: E402

import trimtune as tt  # noqa: E402
from trimtune.data.digits import load_digits_split  # noqa: E402
from trimtune.models import LeNet, minilm_path  # noqa: E402
from trimtune.shrinking.measure import count_macs, count_parameters  # noqa: E402

RATIO = 0.5


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    def __init__(self, classes=10, width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- the two pruners ----
def prune_trimtune(model, example, **kwargs):
    start = time.perf_counter()
    tt.shrink(model, RATIO, example_inputs=example, measure=False, **kwargs)
    return time.perf_counter() - start


def prune_torch_pruning(model, example, ignored, num_heads=None, forward_fn=None, output_transform=None):
    import torch_pruning as tp

    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=RATIO,
        ignored_layers=ignored, num_heads=num_heads or {}, prune_num_heads=bool(num_heads),
        prune_head_dims=False, head_pruning_ratio=RATIO if num_heads else 0.0,
        forward_fn=forward_fn, output_transform=output_transform,
    )
    pruner.step()
    return time.perf_counter() - start


def reload_without_pickle(model, fresh, inputs) -> str:
    """trimtune: save_shrunk -> load_shrunk -> same outputs (Torch-Pruning has to pickle the module)."""
    with tempfile.TemporaryDirectory() as tmp:
        tt.save_shrunk(model, Path(tmp) / "m")
        loaded = tt.load_shrunk(Path(tmp) / "m", model=fresh).eval()
        with torch.no_grad():
            a, b = _call(model, inputs), _call(loaded, inputs)
        a = a.last_hidden_state if hasattr(a, "last_hidden_state") else a
        b = b.last_hidden_state if hasattr(b, "last_hidden_state") else b
        return f"yes (max diff {float((a - b).abs().max()):.1e})"


def _call(model, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def _measure_all(models: dict, inputs, rounds):
    """Params, MACs and latency of each variant; latency interleaved round by round (see _harness)."""
    with torch.no_grad():
        timings = _harness.time_variants({k: (lambda m=m: _call(m, inputs)) for k, m in models.items()}, rounds=rounds, warmup=1)
    return {k: (count_parameters(m), count_macs(m, inputs), timings[k].median_ms) for k, m in models.items()}


# ---- cases ----
def resnet_case(quick):
    torch.manual_seed(0)
    dense = ResNet18Cifar(width=16 if quick else 64).eval()
    x = torch.randn(16, 3, 32, 32)
    ours, theirs = copy.deepcopy(dense), copy.deepcopy(dense)
    t_ours = prune_trimtune(ours, (x,))
    t_theirs = prune_torch_pruning(theirs, x, ignored=[theirs.fc])
    return dense, ours, theirs, (x,), t_ours, t_theirs, None, reload_without_pickle(ours, copy.deepcopy(dense), (x,))


def lenet_case(quick):
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    dense = LeNet()
    optimizer = torch.optim.Adam(dense.parameters(), lr=3e-3)
    for _ in range(3 if quick else 15):
        for i in range(0, len(x_train), 64):
            loss = F.cross_entropy(dense(x_train[i : i + 64]), y_train[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    dense.eval()
    x = x_test[:16]
    ours, theirs = copy.deepcopy(dense), copy.deepcopy(dense)
    t_ours = prune_trimtune(ours, (x,))
    t_theirs = prune_torch_pruning(theirs, x, ignored=[theirs.fc2])

    def quality(model):
        with torch.no_grad():
            return f"acc {(model(x_test).argmax(1) == y_test).float().mean().item():.3f}"

    return dense, ours, theirs, (x,), t_ours, t_theirs, quality, reload_without_pickle(ours, copy.deepcopy(dense), (x,))


def minilm_case(quick):
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    texts = _sentences()
    seq = 32 if quick else 128
    batch = tokenizer(texts[:16], padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    ours, theirs = copy.deepcopy(dense), copy.deepcopy(dense)
    t_ours = prune_trimtune(ours, inputs)
    num_heads, ignored = {}, [theirs.embeddings, theirs.pooler]
    for layer in theirs.encoder.layer:
        attn = layer.attention.self
        for proj in (attn.query, attn.key, attn.value):
            num_heads[proj] = attn.num_attention_heads
        ignored += [layer.attention.output.dense, layer.output.dense]  # keep the hidden size, as trimtune does
    t_theirs = prune_torch_pruning(
        theirs, inputs, ignored=ignored, num_heads=num_heads,
        forward_fn=lambda m, inp: m(**inp), output_transform=lambda out: out.last_hidden_state.sum(),
    )
    for layer in theirs.encoder.layer:  # Torch-Pruning leaves the head count attribute to the user
        attn = layer.attention.self
        attn.num_attention_heads = attn.query.out_features // attn.attention_head_size
    eval_batch = tokenizer(texts, padding=True, truncation=True, max_length=seq, return_tensors="pt")
    eval_inputs = {"input_ids": eval_batch["input_ids"], "attention_mask": eval_batch["attention_mask"]}

    def embed(model):
        with torch.no_grad():
            hidden = model(**eval_inputs).last_hidden_state
        mask = eval_inputs["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    reference = embed(dense)

    def quality(model):
        return f"cos {F.cosine_similarity(embed(model), reference).mean().item():.3f}"

    return dense, ours, theirs, inputs, t_ours, t_theirs, quality, reload_without_pickle(ours, None, inputs)


def _sentences() -> list[str]:
    try:
        from trimtune.data.text import load_demo_texts

        return [row["text"] for row in load_demo_texts()][:64]
    except ImportError:
        words = "the model learns fast while small data helps a great deal for every task we try today".split()
        torch.manual_seed(0)
        return [" ".join(words[i] for i in torch.randint(0, len(words), (12,)).tolist()) for _ in range(64)]


def _warm_imports():
    """Import what both pruners use (fx, transformers, torch_pruning) before timing either."""
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    import torch_pruning  # noqa: F401
    import transformers  # noqa: F401


def run(quick: bool) -> str:
    _harness.set_threads()
    _warm_imports()
    rounds = 3 if quick else 7
    headers = ["model", "variant", "params", "MACs (M)", "latency ms", "speedup / MACs reduction", "prune s", "quality", "reload w/o pickle"]
    rows = []
    for label, case in (("ResNet-18 CIFAR", resnet_case), ("LeNet digits", lenet_case), ("all-MiniLM-L6-v2", minilm_case)):
        dense, ours, theirs, inputs, t_ours, t_theirs, quality, reload = case(quick)
        figures = _measure_all({"dense": dense, "trimtune": ours, "Torch-Pruning": theirs}, inputs, rounds)
        base = figures["dense"]
        for name, model, seconds, saved in (("dense", dense, None, ""), ("trimtune", ours, t_ours, reload),
                                            ("Torch-Pruning", theirs, t_theirs, "no (pickles the module)")):
            params, macs, latency = figures[name]
            efficiency = (base[2] / latency) / (base[1] / macs) if model is not dense else None
            rows.append([label, name, f"{params:,}", macs / 1e6, latency, efficiency, seconds,
                         quality(model) if quality else "", saved])
        print(f"done: {label}", file=sys.stderr)
    return _harness.markdown_table(headers, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds (smoke test)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    table = run(args.quick)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
