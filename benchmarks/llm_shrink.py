"""Structured LLM shrinking (issue 24) on SmolLM2-135M: what each choice costs in held-out perplexity,
against Torch-Pruning's LLM width pruning at the same parameter count, recovery by distillation from
the dense model, speed where users feel it, and streamed memory against depth.

Parts (``--part``), each printing JSON lines and merged into one results file:

- ``oneshot``: trimtune's shrink with several configs (width only, depth only, mixed; each repair;
  each importance), streamed from the float32 directory; non-embedding parameters removed, held-out
  perplexity, seconds.
- ``anchor``: Torch-Pruning 1.6 as its ``examples/LLMs/prune_llm.py`` runs it (``BasePruner`` with
  ``GroupMagnitudeImportance(p=2)``, hidden and FFN widths at one ratio, heads kept because
  SmolLM2's 3 KV heads allow no finer step, ``round_to`` 36 rather than the example's 4 (transformers 5
  wants a hidden size divisible by the 9 heads), lm_head ignored, q/k/v not group roots (Torch-Pruning
  issue #527)), at a ratio chosen to remove the same share of non-embedding parameters as ``--config``;
  held-out perplexity.
- ``recover``: ``trimtune tune`` on a shrunk directory with ``distill`` (logit KD from the dense
  directory, alpha 1, T 1; full fine-tuning) on the ``train`` part of the corpus for ``--steps``
  steps; held-out perplexity before and after, wall time.
- ``speed``: prefill (128-token prompt) and greedy decode (128 new tokens) tokens/s, batch 1, dense
  vs shrunk, interleaved rounds, ``--threads`` threads.
- ``memory``: random-weight Llama directories at TinyLlama's width (hidden 2048, FFN 5632, 32/4
  heads) with 4, 8 and 22 layers, each shrunk streamed in its own process; VmHWM.

Text: ``benchmarks/_corpus.py`` (Python's documentation sources; ``apt-get install python3.11-doc``):
calibration from ``calib``, recovery training from ``train``, perplexity on ``heldout`` only.

    PYTHONPATH=src python benchmarks/llm_shrink.py --part oneshot|anchor|recover|speed|memory
        [--config "ffn=0.25,drop_layers=2"] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402
from _corpus import corpus_file  # noqa: E402
from _smollm2 import smollm2_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = Path(os.environ.get("TRIMTUNE_BENCH_SCRATCH", "/work/models/shrink_bench"))
CALIB = (64, 512)
EVAL_TOKENS = 32768
SEQLEN = 512

ONESHOT = [  # (label, config): width only, depth only, mixed; the repair and importance variants of one mix
    ("width: ffn 0.34", "ffn=0.34"),
    ("width: ffn 0.34, no repair", "ffn=0.34,repair=none"),
    ("width: ffn 0.34, bias repair", "ffn=0.34,repair=bias"),
    ("width: ffn 0.34, widths a multiple of 64", "ffn=0.34,round_to=64"),
    ("width: heads 1/3 + ffn 0.25", "heads=0.34,ffn=0.25"),
    ("depth: 8 blocks, block influence", "drop_layers=8"),
    ("depth: 8 blocks, angular", "drop_layers=8,depth_metric=angular"),
    ("mixed: ffn 0.25 + 2 blocks", "ffn=0.25,drop_layers=2"),
    ("mixed: ffn 0.25 + 2 blocks, no repair", "ffn=0.25,drop_layers=2,repair=none"),
    ("mixed: ffn 0.25 + 2 blocks, bias repair", "ffn=0.25,drop_layers=2,repair=bias"),
    ("mixed: ffn 0.25 + 2 blocks, activation", "ffn=0.25,drop_layers=2,importance=activation"),
    ("mixed: ffn 0.25 + 2 blocks, wanda", "ffn=0.25,drop_layers=2,importance=wanda"),
    ("mixed: hidden 0.1 + ffn 0.2", "hidden=0.1,ffn=0.2"),
    ("mixed: ffn 0.25 + 3 blocks", "ffn=0.25,drop_layers=3"),
    ("mixed: ffn 0.25 + 3 blocks, no repair", "ffn=0.25,drop_layers=3,repair=none"),
    ("mixed: ffn 0.25 + 3 blocks, bias repair", "ffn=0.25,drop_layers=3,repair=bias"),
    ("mixed: ffn 0.34 + 2 blocks", "ffn=0.34,drop_layers=2"),
    ("mixed: hidden 0.125 + ffn 0.25", "hidden=0.125,ffn=0.25"),
    ("mixed: heads 1/3 + ffn 0.2 + 1 block", "heads=0.34,ffn=0.2,drop_layers=1"),
    ("width: ffn 0.42", "ffn=0.42"),
    ("width: query heads 1/3 + ffn 0.35", "heads=0.34,gqa=query,ffn=0.35"),
    ("mixed: ffn 0.35 + 2 blocks", "ffn=0.35,drop_layers=2"),
]


def parse_config(text: str):
    from trimtune.prune.structured import StructuredConfig

    fields = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        fields[key] = value if key in ("importance", "depth_metric", "repair", "gqa") else (int(value) if key in ("drop_layers", "round_to") else float(value))
    return StructuredConfig(**fields)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def calibration():
    from trimtune.prune.sequential.calib_text import calibration_samples

    return calibration_samples(corpus_file("calib"), tokenizer(), *CALIB)


def heldout_ids() -> torch.Tensor:
    from trimtune.core.io.text_tokens import tokenize_file

    return tokenize_file(corpus_file("heldout"), tokenizer())[:EVAL_TOKENS]


def perplexity_of(model) -> float:
    from trimtune.training.perplexity import perplexity

    return perplexity(model.eval(), heldout_ids(), SEQLEN)["perplexity"]


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def non_embedding(model) -> int:
    outer = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in outer)


# ---------------------------------------------------------------- parts
def shrink(label: str, spec: str) -> dict:
    from trimtune.prune.structured import shrink_llm_directory

    out = SCRATCH / label.replace(" ", "_").replace(":", "").replace("/", "-").replace(",", "").replace("+", "")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = shrink_llm_directory(smollm2_dir(), out, calibration(), parse_config(spec))
    seconds = time.perf_counter() - start
    return {"label": label, "config": spec, "dir": str(out), "removed": report.removed_fraction, "seconds": seconds,
            "after": report.after, "perplexity": perplexity_of(load(out))}


def oneshot_part(only: list[str] | None) -> dict:
    rows = [{"label": "dense", "removed": 0.0, "perplexity": perplexity_of(load(smollm2_dir()))}]
    print(json.dumps(rows[-1]), flush=True)
    for label, spec in ONESHOT:
        if only and label not in only:
            continue
        rows.append(shrink(label, spec))
        print(json.dumps(rows[-1]), flush=True)
    return {"calibration": f"{CALIB[0]} x {CALIB[1]} tokens", "eval_tokens": EVAL_TOKENS, "seqlen": SEQLEN, "rows": rows}


def torch_pruning_model(ratio: float):
    """SmolLM2 pruned by Torch-Pruning as examples/LLMs/prune_llm.py does it (heads kept: see above)."""
    import torch_pruning as tp

    model = load(smollm2_dir())
    inputs = tokenizer()("Hello world.", return_tensors="pt")["input_ids"]
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads.update({m.q_proj: model.config.num_attention_heads, m.k_proj: model.config.num_key_value_heads,
                              m.v_proj: model.config.num_key_value_heads})
    # q/k/v are not group roots: the groups they root hold only head dimensions, which this setting never
    # prunes (head ratio 0, head dims kept), and building them never ends under transformers 5's rotary
    # code (Torch-Pruning issue #527: its graph walk keeps re-adding the slice/cat of rotate_half with
    # new index sets). Their input channels are still pruned, in the hidden-width group.
    attention = [getattr(layer.self_attn, p) for layer in model.model.layers for p in ("q_proj", "k_proj", "v_proj")]
    pruner = tp.pruner.BasePruner(model, example_inputs=inputs, importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
                                  global_pruning=False, output_transform=lambda x: x.logits, pruning_ratio=ratio,
                                  ignored_layers=[model.lm_head, *attention], num_heads=num_heads, prune_num_heads=True,
                                  prune_head_dims=False, head_pruning_ratio=0.0, round_to=ANCHOR_ROUND_TO)
    for group in pruner.step(interactive=True):
        group.prune()
    if model.config.tie_word_embeddings:  # it prunes the shared weight twice, as embedding and as head: alike, but untied
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
        model.lm_head.weight = model.model.embed_tokens.weight
    model.config.hidden_size = model.lm_head.in_features
    model.config.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features
    return model


# The example's round_to=4, made a multiple of SmolLM2's 9 heads as well: transformers 5 refuses a Llama
# config whose hidden size is not a multiple of num_attention_heads, even with head_dim given.
ANCHOR_ROUND_TO = 36


def anchor_ratio(target: float, dense_config) -> float:
    """Torch-Pruning's ratio whose non-embedding count is nearest ``target`` removed, from the shapes its
    uniform hidden + FFN pruning leaves (heads kept; ``round_to=ANCHOR_ROUND_TO``). Computed, not searched: the one
    real run then reports its own count."""
    h, f, layers = dense_config.hidden_size, dense_config.intermediate_size, dense_config.num_hidden_layers
    q, kv = dense_config.num_attention_heads * dense_config.head_dim, dense_config.num_key_value_heads * dense_config.head_dim

    def removed(ratio: float) -> float:
        step = ANCHOR_ROUND_TO
        h2, f2 = step * int(h * (1 - ratio) / step), step * int(f * (1 - ratio) / step)  # it keeps whole steps, rounding down
        count = lambda hh, ff: layers * (hh * (q + 2 * kv) + q * hh + 3 * hh * ff + 2 * hh) + hh
        return 1 - count(h2, f2) / count(h, f)

    return min((r / 1000 for r in range(600)), key=lambda r: abs(removed(r) - target))


def anchor_part(spec: str) -> dict:
    """Prune with Torch-Pruning at the ratio that removes the share of non-embedding parameters trimtune's
    ``spec`` removes, and score it."""
    from transformers import AutoConfig

    from trimtune.prune.structured.plan import shrunk_config
    from trimtune.prune.structured.report import parameter_count

    config = parse_config(spec)
    dense_config = AutoConfig.from_pretrained(smollm2_dir())
    target = 1 - parameter_count(shrunk_config(dense_config, _widths(dense_config, config), list(range(dense_config.num_hidden_layers - config.drop_layers)), config))["non_embedding"] / parameter_count(dense_config)["non_embedding"]
    dense_count = non_embedding(load(smollm2_dir()))
    ratio = anchor_ratio(target, dense_config)
    start = time.perf_counter()
    model = torch_pruning_model(ratio)
    seconds = time.perf_counter() - start
    out = SCRATCH / "torch_pruning"
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer().save_pretrained(out)
    return {"ratio": ratio, "target_removed": target, "removed": 1 - non_embedding(model) / dense_count, "dir": str(out), "seconds": seconds,
            "after": {"hidden_size": model.config.hidden_size, "intermediate_size": model.config.intermediate_size},
            "perplexity": perplexity_of(load(out))}


def _widths(dense_config, config) -> dict:
    hidden = dense_config.hidden_size - round(config.hidden * dense_config.hidden_size)
    ffn = dense_config.intermediate_size - round(config.ffn * dense_config.intermediate_size)
    q, kv = dense_config.num_attention_heads, dense_config.num_key_value_heads
    removed_kv = round(config.heads * kv) if config.gqa == "kv" else 0
    removed_q = removed_kv * (q // kv) if config.gqa == "kv" else kv * round(config.heads * (q // kv))
    return {"hidden": hidden, "ffn": ffn, "q_heads": q - removed_q, "kv_heads": kv - removed_kv, "head_dim": dense_config.head_dim}


def _train_jsonl() -> Path:
    """The recovery text as JSONL records of about 2,000 characters (a few hundred tokens each)."""
    path = SCRATCH / "train_chunks.jsonl"
    if not path.is_file():
        SCRATCH.mkdir(parents=True, exist_ok=True)
        text = corpus_file("train").read_text()
        with path.open("w") as f:
            for start in range(0, len(text), 2000):
                f.write(json.dumps({"text": text[start:start + 2000]}) + "\n")
    return path


def recover_part(student: str, steps: int, lr: float, method: str | None) -> dict:
    import yaml

    recipe = {"model": {"path": student, "task": "causal-lm"},
              "data": {"train": str(_train_jsonl()), "format": "jsonl", "eval_fraction": 0.01, "batch_size": 4, "max_length": 256},
              "train": {"max_steps": steps, "lr": lr, "warmup_steps": max(1, steps // 20)},
              "distill": {"teacher": str(smollm2_dir()), "alpha": 1.0, "temperature": 1.0, "cache_teacher": False}}
    if method == "lora":
        recipe["method"] = {"type": "lora", "r": 64, "alpha": 128, "targets": "all-linear"}
    out = SCRATCH / f"recovered_{Path(student).name}_{method or 'full'}_{steps}_steps_lr_{lr:g}"
    shutil.rmtree(out, ignore_errors=True)
    recipe_file = SCRATCH / f"{out.name}.yaml"  # one per student: two recoveries may run side by side
    recipe_file.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "trimtune", "tune", str(recipe_file), "--out", str(out), "--quiet"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    merged = SCRATCH / f"{out.name}_merged"
    shutil.rmtree(merged, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "trimtune", "merge", str(out), "--out", str(merged), "--quiet"], env=env, check=True,
                   capture_output=True)
    return {"student": student, "steps": steps, "lr": lr, "method": method or "full", "seconds": seconds,
            "before": perplexity_of(load(student)), "after": perplexity_of(load(merged))}


def speed_part(students: list[str], rounds: int) -> dict:
    """The dense model and each shrunk directory, interleaved in every round (load drifts hit all alike)."""
    from trimtune.training.generation_speed import generation_speed

    prompt = heldout_ids()[None, :128]
    models = {"dense": load(smollm2_dir()), **{student: load(student) for student in students}}
    runs = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            runs[name].append(generation_speed(model, prompt, 128, rounds=1))
    med = {name: {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
           for name, rows in runs.items()}
    return {"threads": torch.get_num_threads(), "rounds": rounds, **med,
            "ratios": {student: {k.replace("tokens_per_s", "ratio"): med[student][k] / med["dense"][k] for k in med["dense"]}
                       for student in students}}


def memory_child(model_dir: str, out: str, spec: str, nsamples: str, seqlen: str) -> None:
    from trimtune.prune.structured import shrink_llm_directory

    _harness.set_threads()
    samples = torch.randint(0, 32000, (int(nsamples), int(seqlen)), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    shrink_llm_directory(model_dir, out, samples, parse_config(spec))
    print(json.dumps({"vmhwm_mb": _harness._status_kib("VmHWM") / 1024, "seconds": time.perf_counter() - start}))


def memory_part(depths, spec: str) -> dict:
    from llm_prune import write_random_llama

    rows = []
    for layers in depths:
        source, out = Path(f"/tmp/llm_shrink_mem_{layers}"), Path(f"/tmp/llm_shrink_mem_{layers}_out")
        for p in (source, out):
            shutil.rmtree(p, ignore_errors=True)
        try:
            size = write_random_llama(source, layers)
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            done = subprocess.run([sys.executable, __file__, "--child", str(source), str(out), spec, "4", "128"], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            rows.append({"layers": layers, "size_gb": size, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            for p in (source, out):
                shutil.rmtree(p, ignore_errors=True)
    return {"config": spec, "calibration": "4 x 128 random tokens", "rows": rows}


def _one(students: list[str] | None) -> str:
    if not students or len(students) != 1:
        raise SystemExit("--part recover takes one --student directory")
    return students[0]


def main() -> None:
    global CALIB, EVAL_TOKENS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("oneshot", "anchor", "recover", "speed", "memory"))
    parser.add_argument("--config", default="ffn=0.25,drop_layers=2", help="trimtune's shrink for anchor/memory")
    parser.add_argument("--only", nargs="*", help="oneshot: only these labels")
    parser.add_argument("--student", nargs="+", help="recover: a shrunk directory; speed: one or more")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--method", choices=("lora",), default=None, help="recover: LoRA instead of full fine-tuning")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depths", default="4,8,22")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", default="64x512", help="calibration windows NxL (default: %(default)s)")
    parser.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, help="held-out tokens scored (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="append the part's results to this JSON file")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return memory_child(*args.child)
    torch.set_num_threads(args.threads)
    CALIB, EVAL_TOKENS = tuple(int(v) for v in args.calib.split("x")), args.eval_tokens
    SCRATCH.mkdir(parents=True, exist_ok=True)
    result = {
        "oneshot": lambda: oneshot_part(args.only),
        "anchor": lambda: anchor_part(args.config),
        "recover": lambda: recover_part(_one(args.student), args.steps, args.lr, args.method),
        "speed": lambda: speed_part(args.student, args.rounds),
        "memory": lambda: memory_part([int(d) for d in args.depths.split(",")], args.config),
    }[args.part]()
    print(json.dumps(result), flush=True)
    if args.out:
        saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
        saved.setdefault(args.part, []).append(result)
        args.out.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
