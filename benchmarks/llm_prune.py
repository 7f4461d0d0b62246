"""Block-by-block LLM pruning (issue 16): quality on real weights, memory and speed of the streaming run.

1. ``quality``: all-MiniLM-L6-v2 pruned by the sequential pipeline (calibration: 32 windows of 128
   tokens drawn from the demo texts) with magnitude, Wanda and SparseGPT at 50 % (with and without
   OWL) and 2:4. Per layer, the reconstruction error ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on the demo texts (X: the
   layer's inputs in the pruned model, real tokens only; W dense, Ŵ pruned), and the cosine between
   pruned and dense mean-pooled sentence embeddings.
2. ``memory``: random-weight Llama directories (hidden 2048, FFN 5632, 32 heads / 4 KV heads, vocab
   32000, fp32) with 4, 8 and 22 layers written under /tmp (deleted after), each streamed (Wanda,
   4 x 128 tokens; ``--method sparsegpt`` for SparseGPT) in its own process; the figure is that
   process's VmHWM over the whole run.
3. ``speed``: seconds per block and peak for SparseGPT and Wanda on a 3-layer directory of that width
   with 16 x 256 calibration tokens.
   On the same directory and tokens, llm-compressor's ``oneshot`` SparseGPTModifier in its own process
   from the separate venv /work/venv-llmc (if it exists): time, VmHWM, share of agreeing mask entries.
4. ``agreement``: trimtune's two SparseGPT mask selections against llm-compressor on a small random Llama.
5. ``smollm2`` (issue 24; not in ``all``): the real SmolLM2-135M (``_smollm2.py``) with 64 x 512 tokens of
   the English calibration text (``_corpus.py``): trimtune streamed against llm-compressor's oneshot for
   SparseGPT 2:4 and 50 % (selection reference) and Wanda 50 %, each in its own process: wall and CPU
   time, VmHWM, mask agreement, held-out perplexity of both outputs. ``--sides trimtune`` runs one side.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/llm_prune.py [--part quality|memory|speed|agreement|smollm2|all|none]
        [--method wanda|sparsegpt|magnitude] [--depths 4,8,22] [--calib NxT] [--variants ...] [--sides trimtune,llmc]
        [--out F.json] [--docs [--merge F.json ...]]
"""

from __future__ import annotations

import argparse
import copy
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

BEGIN, END = "<!-- llm_prune:begin -->", "<!-- llm_prune:end -->"
ROOT = Path(__file__).resolve().parent.parent
WIDE = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}
NSAMPLES, SEQLEN = 16, 256
LLMC_PYTHON = Path("/work/venv-llmc/bin/python")


# ---------------------------------------------------------------- quality on MiniLM
def _demo_stream(tokenizer) -> torch.Tensor:
    from trimtune.data import load_demo_texts

    text = "\n".join(r["text"] for r in load_demo_texts())
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _windows(ids: torch.Tensor, n: int, seqlen: int) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - seqlen + 1, (n,), generator=torch.Generator().manual_seed(0))
    return torch.stack([ids[s:s + seqlen] for s in starts.tolist()])


def _eval_batches(tokenizer):
    from trimtune.data import load_demo_texts

    texts = [r["text"] for r in load_demo_texts()]
    return [tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt") for i in range(0, len(texts), 64)]


@torch.no_grad()
def _embeddings(model, batches) -> torch.Tensor:
    out = []
    for enc in batches:
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def quality_part() -> dict:
    from transformers import AutoModel, AutoTokenizer

    from trimtune.models import minilm_path
    from trimtune.prune.sequential import SequentialConfig, prune_sequential

    path = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    dense = AutoModel.from_pretrained(path).eval()
    samples = _windows(_demo_stream(tokenizer), 32, 128)
    batches = _eval_batches(tokenizer)
    calib_batches = [{"input_ids": w[None], "attention_mask": torch.ones(1, len(w), dtype=torch.long)} for w in samples]
    reference = _embeddings(dense, batches)
    variants = [("magnitude", 0.5, False), ("wanda", 0.5, False), ("wanda", 0.5, True), ("sparsegpt", 0.5, False),
                ("sparsegpt", 0.5, True), ("magnitude", "2:4", False), ("wanda", "2:4", False), ("sparsegpt", "2:4", False)]
    rows = []
    for method, sparsity, owl in variants:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        report = prune_sequential(model, samples, SequentialConfig(method, sparsity, owl=owl))
        seconds = time.perf_counter() - start
        cosine = torch.nn.functional.cosine_similarity(_embeddings(model, batches), reference).mean().item()
        errors = layer_errors(model, dense, batches)
        calib_errors = layer_errors(model, dense, calib_batches)  # on the tokens SparseGPT reconstructs
        rows.append({"method": method, "sparsity": str(sparsity), "owl": owl, "cosine": cosine, "errors": errors,
                     "mean_error": sum(errors.values()) / len(errors), "calib_errors": calib_errors,
                     "achieved": report.sparsity, "seconds": seconds})
        print(f"  quality {method} {sparsity} owl={owl}: cosine {cosine:.4f}, mean error {rows[-1]['mean_error']:.4f}", file=sys.stderr, flush=True)
    return {"calibration": "32 windows x 128 tokens of the demo texts", "rows": rows}


@torch.no_grad()
def layer_errors(pruned, dense, batches) -> dict[str, float]:
    """Per pruned layer: ‖X(W − Ŵ)ᵀ‖² / ‖XWᵀ‖² over the real (unpadded) tokens it sees in the pruned model."""
    from trimtune.core.masks import masked_layers

    layers = dict(masked_layers(pruned))
    num = dict.fromkeys(layers, 0.0)
    den = dict.fromkeys(layers, 0.0)
    keep = {}

    def hook_for(name, layer):
        w = dense.get_submodule(name).weight.detach()
        w_hat = layer.weight.detach() * layer.weight_mask

        def hook(module, args):
            x = args[0][keep["mask"]]
            full = x @ w.t()
            num[name] += float((full - x @ w_hat.t()).pow(2).sum())
            den[name] += float(full.pow(2).sum())

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n, layer)) for n, layer in layers.items()]
    try:
        for enc in batches:
            keep["mask"] = enc["attention_mask"].bool()
            pruned(**enc)
    finally:
        for h in handles:
            h.remove()
    return {n: num[n] / den[n] for n in layers}


# ---------------------------------------------------------------- random Llama directories
def write_random_llama(path: Path, layers: int, seed: int = 0, width: dict | None = None) -> float:
    """A fp32 Llama directory with random weights, one shard per block (written without ever
    holding the model). Returns its size in GB."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=2048, tie_word_embeddings=False, **(width or WIDE))
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    groups: dict[str, list[str]] = {}
    for key in shapes:
        group = ".".join(key.split(".")[:3]) if key.startswith("model.layers.") else key
        groups.setdefault(group, []).append(key)
    path.mkdir(parents=True)
    config.save_pretrained(path)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, (group, keys) in enumerate(groups.items()):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.ones(shapes[k]) if k.endswith("norm.weight") else torch.randn(shapes[k], generator=generator) * 0.02) for k in keys}
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update((k, name) for k in keys)
        total += sum(t.numel() * 4 for t in tensors.values())
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total / 1e9


def random_tokens(nsamples: int, seqlen: int) -> torch.Tensor:
    """The random calibration tokens of the random-Llama parts (both sides draw the same)."""
    return torch.randint(0, WIDE["vocab_size"], (int(nsamples), int(seqlen)), generator=torch.Generator().manual_seed(0))


def stream_child(model_dir: str, out: str, method: str, sparsity: str, nsamples: str, seqlen: str, selection: str = "exact",
                 samples_file: str = "") -> None:
    """Runs in its own process: the streaming prune of one directory; prints JSON with VmHWM and times.
    ``samples_file``: calibration token ids saved with torch.save (else random tokens of nsamples x seqlen)."""
    from trimtune.prune.sequential import SequentialConfig
    from trimtune.prune.sequential.stream import prune_directory

    _harness.set_threads()
    samples = torch.load(samples_file) if samples_file else random_tokens(nsamples, seqlen)
    marks, cpu = [time.perf_counter()], time.process_time()
    report = prune_directory(model_dir, out, samples, SequentialConfig(method, sparsity, selection=selection), on_block=lambda i: marks.append(time.perf_counter()))
    block_seconds = [b - a for a, b in zip(marks[1:-1], marks[2:])]  # block 0 also pays capture and the non-block shards
    print(json.dumps({"vmhwm_mb": _harness._status_kib("VmHWM") / 1024, "total_s": time.perf_counter() - marks[0],
                      "cpu_s": time.process_time() - cpu, "block_s": sorted(block_seconds)[len(block_seconds) // 2],
                      "blocks": len(marks) - 1, "sparsity": report.sparsity}))


def _child(*args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(_harness.THREADS)}
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _scratch(*names: str) -> list[Path]:
    paths = [Path(f"/tmp/llm_prune_bench_{n}") for n in names]
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
    return paths


def memory_part(depths=(4, 8, 22), method: str = "wanda", calib=(4, 128)) -> dict:
    """Peak memory of the whole streaming run against depth (few calibration tokens: the peak is
    weights, not activations, and the 2 shared cores cannot afford more)."""
    rows = []
    for layers in depths:
        source, out = _scratch(str(layers), f"{layers}_out")
        try:
            size = write_random_llama(source, layers)
            rows.append({"layers": layers, "size_gb": size, "run": _child(source, out, method, "0.5", *calib)})
            print(f"  memory {rows[-1]}", file=sys.stderr, flush=True)
        finally:
            _scratch(str(layers), f"{layers}_out")
    return {"method": method, "calibration": f"{calib[0]} x {calib[1]} random tokens", "rows": rows}


def speed_part(layers: int = 3, nsamples: int = NSAMPLES, seqlen: int = SEQLEN) -> dict:
    """Seconds per block (median over blocks 1.., block 0 also pays the capture) and peak, per method;
    then llm-compressor on the same directory and tokens, and how many mask entries agree with ours."""
    source, out, wanda_out, theirs = _scratch("speed", "speed_out", "speed_wanda", "speed_llmc")
    try:
        size = write_random_llama(source, layers)
        # the reference selection: llm-compressor's mask choice, so "same masks" can be checked
        runs = {"sparsegpt": _child(source, out, "sparsegpt", "0.5", nsamples, seqlen, "reference")}
        print(f"  speed sparsegpt {runs['sparsegpt']}", file=sys.stderr, flush=True)
        runs["wanda"] = _child(source, wanda_out, "wanda", "0.5", nsamples, seqlen)
        print(f"  speed wanda {runs['wanda']}", file=sys.stderr, flush=True)
        result = {"layers": layers, "size_gb": size, "calibration": f"{nsamples} x {seqlen} random tokens", "runs": runs,
                  "selection": "reference"}
        result["llmc"] = llmc_run(source, out, theirs, nsamples, seqlen)
        print(f"  llmc {result['llmc']}", file=sys.stderr, flush=True)
        return result
    finally:
        _scratch("speed", "speed_out", "speed_wanda", "speed_llmc")


# ---------------------------------------------------------------- llm-compressor
LLMC_SCRIPT = r"""
import json, sys, time, torch
torch.set_num_threads(2)
from transformers import AutoModelForCausalLM, AutoTokenizer
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
source, out, samples_file, tokenizer_dir, method, sparsity = sys.argv[1:7]
samples = torch.load(samples_file)
n, seqlen = samples.shape
ds = Dataset.from_dict({"input_ids": samples.tolist(), "attention_mask": torch.ones_like(samples).tolist()})
start, cpu = time.perf_counter(), time.process_time()
model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
structure = {"mask_structure": sparsity, "sparsity": 0.5} if ":" in sparsity else {"sparsity": float(sparsity)}
if method == "wanda":
    recipe = WandaPruningModifier(targets=["Linear"], ignore=["lm_head"], **structure)
else:
    recipe = SparseGPTModifier(block_size=128, dampening_frac=0.01, targets=["Linear"], ignore=["lm_head"], **structure)
# the dataset is already token ids; oneshot insists on a processor anyway, any tokenizer will do
oneshot(model=model, processor=AutoTokenizer.from_pretrained(tokenizer_dir), dataset=ds, recipe=recipe, num_calibration_samples=n, max_seq_length=seqlen, pipeline="sequential")
model.save_pretrained(out, save_compressed=False)  # plain dense tensors: the masks are compared entry by entry
with open("/proc/self/status") as f:
    hwm = [int(l.split()[1]) for l in f if l.startswith("VmHWM")][0]
print(json.dumps({"vmhwm_mb": hwm / 1024, "total_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu}))
"""


def llmc_run(source: Path, ours: Path, theirs: Path, nsamples: int = NSAMPLES, seqlen: int = SEQLEN,
             samples: torch.Tensor | None = None, tokenizer_dir: Path | None = None, method: str = "sparsegpt", sparsity: str = "0.5") -> dict:
    """llm-compressor's oneshot (SparseGPT or Wanda) in its own process (separate venv); masks compared with
    ``ours``. ``samples`` default: the random tokens ``stream_child`` draws for (nsamples, seqlen)."""
    if not LLMC_PYTHON.exists():
        return {"skipped": f"{LLMC_PYTHON} not found"}
    from trimtune.models import minilm_path

    if samples is None:
        samples = random_tokens(nsamples, seqlen)
    samples_file = theirs.with_name(theirs.name + "_samples.pt")
    torch.save(samples, samples_file)
    try:
        done = subprocess.run([str(LLMC_PYTHON), "-c", LLMC_SCRIPT, str(source), str(theirs), str(samples_file),
                               str(tokenizer_dir or minilm_path()), method, sparsity],
                              env={**os.environ, "OMP_NUM_THREADS": str(_harness.THREADS)}, capture_output=True, text=True)
    finally:
        samples_file.unlink(missing_ok=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:300]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if (ours / "model.safetensors.index.json").is_file():  # trimtune's side may not have run (--sides llmc)
        result.update(agreement(ours, theirs))
    return result


def agreement(ours: Path, theirs: Path) -> dict:
    """Share of block weight entries whose kept/pruned state is the same in both outputs, and the
    largest difference between the weights both kept, relative to the layer's largest weight."""
    from safetensors import safe_open

    their_map = {}
    for f in theirs.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            their_map.update((k, f) for k in h.keys())
    agree = total = 0
    worst = 0.0
    per_layer = {}
    for key, shard in json.loads((ours / "model.safetensors.index.json").read_text())["weight_map"].items():
        if ".layers." in key and key.endswith("proj.weight"):
            with safe_open(str(ours / shard), "pt") as a, safe_open(str(their_map[key]), "pt") as b:
                x, y = a.get_tensor(key), b.get_tensor(key)
            both = (x != 0) & (y != 0)
            same = int(((x != 0) == (y != 0)).sum())
            per_layer[key] = same / x.numel()
            agree += same
            total += x.numel()
            worst = max(worst, float(((x - y).abs() * both).max() / x.abs().max()))
    return {"mask_agreement": agree / total, "kept_weight_max_rel_diff": worst, "per_layer": per_layer}


SMALL = {"hidden_size": 512, "intermediate_size": 1408, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32000}


def agreement_part(layers: int = 2, nsamples: int = 16, seqlen: int = 128) -> dict:
    """trimtune's SparseGPT (50 %) with each mask selection against llm-compressor's on one small
    random Llama directory and the same calibration tokens: how many mask entries agree."""
    source, exact, reference, theirs = _scratch("agree", "agree_exact", "agree_reference", "agree_llmc")
    try:
        write_random_llama(source, layers, width=SMALL)
        runs = {sel: _child(source, out, "sparsegpt", "0.5", nsamples, seqlen, sel) for sel, out in (("exact", exact), ("reference", reference))}
        llmc = llmc_run(source, reference, theirs, nsamples, seqlen)  # compared with the reference run
        if "mask_agreement" in llmc:
            runs["reference"].update({k: llmc[k] for k in ("mask_agreement", "kept_weight_max_rel_diff", "per_layer")})
            runs["exact"].update(agreement(exact, theirs))
        return {"layers": layers, "width": SMALL, "calibration": f"{nsamples} x {seqlen} random tokens", "runs": runs, "llmc": llmc}
    finally:
        _scratch("agree", "agree_exact", "agree_reference", "agree_llmc")


# ---------------------------------------------------------------- SmolLM2-135M against llm-compressor (issue 24)
SMOL_VARIANTS = ("sparsegpt:2:4:reference", "sparsegpt:0.5:reference", "wanda:0.5:exact")
PPL_TOKENS = 16384


def _variant(spec: str) -> tuple[str, str, str]:
    """"method:sparsity:selection", sparsity "0.5" or "2:4"."""
    method, *middle, selection = spec.split(":")
    return method, ":".join(middle), selection


@torch.no_grad()
def _perplexity(model_dir: Path, ids: torch.Tensor, seqlen: int) -> float:
    from transformers import AutoModelForCausalLM

    from trimtune.training.perplexity import perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return perplexity(model, ids, seqlen)["perplexity"]


def smollm2_part(nsamples: int = 64, seqlen: int = 512, variants=SMOL_VARIANTS, sides=("trimtune", "llmc"),
                 ppl_tokens: int = PPL_TOKENS) -> dict:
    """SmolLM2-135M (fp32), calibration windows of the English corpus: trimtune's streamed prune and
    llm-compressor's oneshot per variant, each in its own process (wall, CPU, VmHWM), then the share of
    agreeing mask entries and the held-out perplexity (first ``ppl_tokens`` tokens, windows of ``seqlen``)."""
    from _corpus import corpus_file
    from _smollm2 import smollm2_dir
    from transformers import AutoTokenizer

    from trimtune.core.io.text_tokens import tokenize_file
    from trimtune.prune.sequential.calib_text import calibration_samples

    model_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = calibration_samples(corpus_file("calib"), tokenizer, nsamples, seqlen)
    heldout = tokenize_file(corpus_file("heldout"), tokenizer)[:ppl_tokens]
    samples_file = Path("/tmp/llm_prune_bench_smol_samples.pt")
    torch.save(samples, samples_file)
    result = {"calibration": f"{nsamples} x {seqlen} tokens of {corpus_file('calib').name}", "heldout_tokens": len(heldout),
              "dense_perplexity": _perplexity(model_dir, heldout, seqlen), "rows": []}
    try:
        for spec in variants:
            method, sparsity, selection = _variant(spec)
            tag = f"smol_{method}_{sparsity.replace(':', 'of')}"
            ours, theirs = _scratch(tag, f"{tag}_llmc")
            row = {"method": method, "sparsity": sparsity, "selection": selection}
            try:
                if "trimtune" in sides:
                    row["trimtune"] = _child(model_dir, ours, method, sparsity, nsamples, seqlen, selection, samples_file)
                    row["trimtune"]["perplexity"] = _perplexity(ours, heldout, seqlen)
                if "llmc" in sides:
                    row["llmc"] = llmc_run(model_dir, ours, theirs, samples=samples, tokenizer_dir=model_dir, method=method, sparsity=sparsity)
                    if "total_s" in row["llmc"]:
                        row["llmc"]["perplexity"] = _perplexity(theirs, heldout, seqlen)
                        row["llmc"].pop("per_layer", None)
            finally:
                _scratch(tag, f"{tag}_llmc")
            print(f"  smollm2 {row}", file=sys.stderr, flush=True)
            result["rows"].append(row)
    finally:
        samples_file.unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------- docs
def _render_memory(m: dict) -> list[str]:
    first = m["rows"][0]["layers"]
    return ["", f"Streaming from disk: random-weight fp32 Llama (hidden 2048, FFN 5632, 32 heads / 4 KV, vocab 32000), "
            f"{m['method']} 50 %, calibration {m['calibration']}; each run in its own process, peak = that process's VmHWM "
            "over the whole run (imports, skeleton, every block, every shard written), 2 threads.", "",
            f"| layers | size on disk | peak memory (VmHWM) | peak / {first}-layer peak | peak / model size | total s |",
            "|---|---|---|---|---|---|"] + [_memory_row(r, m["rows"][0]["run"]["vmhwm_mb"]) for r in m["rows"]]


def _memory_row(r: dict, base: float) -> str:
    run = r["run"]
    return (f"| {r['layers']} | {r['size_gb']:.2f} GB | {run['vmhwm_mb']:.0f} MB | {run['vmhwm_mb'] / base:.2f} | "
            f"{run['vmhwm_mb'] / (r['size_gb'] * 1000):.3f} | {run['total_s']:.0f} |")


def render(results: dict) -> str:
    lines = ["## Block-by-block LLM pruning (`benchmarks/llm_prune.py`, issue #16)", ""]
    q = results.get("quality")
    if q:
        lines += [f"Quality on all-MiniLM-L6-v2 (calibration: {q['calibration']}; evaluation: all demo texts). "
                  "Error = per-layer ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖², mean and worst over the 36 layers; cosine = pruned vs dense "
                  "mean-pooled embedding, mean over texts.", "",
                  "| method | sparsity | OWL | embedding cosine | mean layer error | worst layer error | achieved sparsity | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in q["rows"]:
            lines.append(f"| {r['method']} | {r['sparsity']} | {'yes' if r['owl'] else 'no'} | {r['cosine']:.4f} | {r['mean_error']:.4f} | "
                         f"{max(r['errors'].values()):.4f} | {100 * r['achieved']:.1f} % | {r['seconds']:.1f} |")
        by = {(r["method"], r["sparsity"], r["owl"]): r for r in q["rows"]}
        s, w = by[("sparsegpt", "2:4", False)], by[("wanda", "2:4", False)]
        ratios = [s["errors"][n] / w["errors"][n] for n in s["errors"]]
        lines += ["", f"2:4 targets: SparseGPT cosine − Wanda cosine = {s['cosine'] - w['cosine']:+.4f} (target ≥ +0.05); "
                  f"SparseGPT / Wanda layer error on the demo texts: worst {max(ratios):.4f}, median {sorted(ratios)[len(ratios) // 2]:.4f} "
                  f"(target ≤ 0.5 on every layer: {'met' if max(ratios) <= 0.5 else 'missed on ' + str(sum(r > 0.5 for r in ratios)) + ' of ' + str(len(ratios)) + ' layers'})."]
        if "calib_errors" in s:
            calib = [s["calib_errors"][n] / w["calib_errors"][n] for n in s["calib_errors"]]
            lines += ["", f"The same ratio on the calibration windows themselves (what SparseGPT minimises): worst {max(calib):.4f}, "
                      f"median {sorted(calib)[len(calib) // 2]:.4f}; above 0.5 on {sum(r > 0.5 for r in calib)} of {len(calib)} layers."]
    for key in sorted(k for k in results if k.startswith("memory")):  # "memory" (Wanda), "memory_sparsegpt", ...
        lines += _render_memory(results[key])
    sp = results.get("speed")
    if sp:
        lines += ["", f"Speed at that width ({sp['layers']}-layer directory, {sp['size_gb']:.2f} GB; calibration {sp['calibration']}, "
                  "seconds per block = median "
                  "over blocks 1.., block 0 also pays the capture and the non-block shards):", "",
                  "| method | s per block | total s | peak memory (VmHWM) |", "|---|---|---|---|"]
        for method, run in sp["runs"].items():
            lines.append(f"| {method} 50 % | {run['block_s']:.1f} | {run['total_s']:.0f} | {run['vmhwm_mb']:.0f} MB |")
    c = (sp or {}).get("llmc")
    if c:
        if "skipped" in c or "error" in c:
            lines += ["", f"llm-compressor: {c.get('skipped') or c.get('error')}"]
        else:
            ours = sp["runs"]["sparsegpt"]
            lines += ["", f"llm-compressor 0.14 `oneshot` with SparseGPTModifier (50 %, block 128, dampening 0.01, sequential "
                      f"pipeline, separate venv) on the same directory and tokens, own process: {c['total_s']:.0f} s and "
                      f"{c['vmhwm_mb']:.0f} MB peak (load + prune + save) vs trimtune's streaming run {ours['total_s']:.0f} s "
                      f"({ours['total_s'] / c['total_s']:.2f}x) and {ours['vmhwm_mb']:.0f} MB ({ours['vmhwm_mb'] / c['vmhwm_mb']:.2f}x); "
                      f"masks agree on {100 * c['mask_agreement']:.3f} % of entries"
                      + (" (trimtune with `selection='reference'`, llm-compressor's mask choice)." if sp.get("selection") == "reference"
                         else " (trimtune's default exact count per column block; the reference code's `<= threshold` prunes one "
                              "entry more, and the updates then drift apart).")]
    lines += _render_agreement(results.get("agreement"))
    lines += _render_smollm2(results.get("smollm2"))
    notes = results.get("notes", [])
    if notes:
        lines += ["", "Notes on this run:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Command: `PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/llm_prune.py --part all --docs` "
              "(parts: `--part quality|memory|speed`, `--part memory --method sparsegpt --depths 4,8` for SparseGPT's memory table, "
              "each `--out F.json`; `--part none --docs --merge F.json ...` renders them together).", ""]
    return "\n".join(lines)


def _render_smollm2(r: dict | None) -> list[str]:
    if not r:
        return []
    lines = ["", f"SmolLM2-135M (fp32, 30 layers), calibration {r['calibration']}, each run in its own process, 2 threads: "
             "trimtune's streamed prune (`prune_directory`) against llm-compressor 0.14 `oneshot` (sequential pipeline, "
             "separate venv; load + prune + save). Times are wall seconds (CPU seconds in brackets); peak = VmHWM; "
             f"perplexity on the first {r['heldout_tokens']} tokens of heldout.txt in windows of the calibration length "
             f"(dense: {r['dense_perplexity']:.2f}).", "",
             "| method | trimtune s | llm-compressor s | time ratio | trimtune peak | llm-compressor peak | peak ratio | masks alike | perplexity trimtune / llm-compressor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ours, theirs = row.get("trimtune", {}), row.get("llmc", {})
        label = f"{row['method']} {row['sparsity']}" + (f" ({row['selection']})" if row["method"] == "sparsegpt" else "")
        if "total_s" not in ours or "total_s" not in theirs:
            lines.append(f"| {label} | {_seconds(ours)} | {_seconds(theirs) or theirs.get('skipped') or theirs.get('error', '')} | | | | | | |")
            continue
        lines.append(f"| {label} | {_seconds(ours)} | {_seconds(theirs)} | {ours['total_s'] / theirs['total_s']:.2f}x | "
                     f"{ours['vmhwm_mb']:.0f} MB | {theirs['vmhwm_mb']:.0f} MB | {ours['vmhwm_mb'] / theirs['vmhwm_mb']:.2f}x | "
                     f"{100 * theirs.get('mask_agreement', float('nan')):.2f} % | {ours['perplexity']:.2f} / {theirs['perplexity']:.2f} |")
    return lines


def _seconds(run: dict) -> str:
    return f"{run['total_s']:.0f} ({run['cpu_s']:.0f})" if "total_s" in run else ""


def _render_agreement(a: dict | None) -> list[str]:
    if not a:
        return []
    if "mask_agreement" not in a["runs"]["exact"]:
        return ["", f"Mask agreement with llm-compressor: {a['llmc'].get('skipped') or a['llmc'].get('error')}"]
    width = a["width"]
    lines = ["", f"Mask agreement with llm-compressor 0.14 (`oneshot`, SparseGPTModifier 50 %, block 128, dampening 0.01, "
             f"sequential pipeline, separate venv) on a {a['layers']}-layer random Llama (hidden {width['hidden_size']}, FFN "
             f"{width['intermediate_size']}, {width['num_attention_heads']} / {width['num_key_value_heads']} heads), the same "
             f"{a['calibration']}: share of block weight entries pruned or kept alike, overall and per block.", "",
             "| trimtune selection | all layers | block 0, worst layer | block 1.., worst layer | kept weights, largest difference / layer max |",
             "|---|---|---|---|---|"]
    for selection, run in a["runs"].items():
        first = [v for k, v in run["per_layer"].items() if ".layers.0." in k]
        rest = [v for k, v in run["per_layer"].items() if ".layers.0." not in k]
        lines.append(f"| {selection} | {100 * run['mask_agreement']:.3f} % | {100 * min(first):.3f} % | {100 * min(rest):.3f} % | "
                     f"{run['kept_weight_max_rel_diff']:.3f} |")
    return lines


def write_docs(results: dict) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    old = doc.read_text()
    section = f"{BEGIN}\n{render(results)}{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(new)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        stream_child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=("quality", "memory", "speed", "agreement", "smollm2", "all", "none"),
                        help="none: measure nothing (with --docs --merge: render earlier results)")
    parser.add_argument("--merge", type=Path, action="append", default=[], help="earlier --out JSON files to include in --docs")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--docs", action="store_true", help="rewrite this benchmark's section of docs/benchmarks.md")
    parser.add_argument("--depths", default="4,8,22", help="layer counts for the memory part (default: %(default)s)")
    parser.add_argument("--calib", help=f"speed / smollm2 part: calibration samples x tokens (default: {NSAMPLES}x{SEQLEN} / 64x512)")
    parser.add_argument("--variants", default=",".join(SMOL_VARIANTS), help="smollm2 part: method:sparsity:selection, comma-separated (default: %(default)s)")
    parser.add_argument("--sides", default="trimtune,llmc", help="smollm2 part: which tools to run (default: %(default)s)")
    parser.add_argument("--method", default="wanda", choices=("wanda", "sparsegpt", "magnitude"),
                        help="pruning method of the memory part (default: %(default)s)")
    args = parser.parse_args()
    _harness.set_threads()
    results = {}
    if args.part in ("quality", "all"):
        results["quality"] = quality_part()
    if args.part in ("memory", "all"):
        key = "memory" if args.method == "wanda" else f"memory_{args.method}"
        results[key] = memory_part(tuple(int(d) for d in args.depths.split(",")), args.method)
    if args.part in ("speed", "all"):
        results["speed"] = speed_part(3, *map(int, (args.calib or f"{NSAMPLES}x{SEQLEN}").split("x")))
    if args.part == "smollm2":  # not in "all": it needs the SmolLM2 directory and takes an hour
        results["smollm2"] = smollm2_part(*map(int, (args.calib or "64x512").split("x")), variants=args.variants.split(","),
                                          sides=tuple(args.sides.split(",")))
    if args.part in ("agreement", "all"):
        results["agreement"] = agreement_part()
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    if args.docs:
        for earlier in args.merge:
            results = {**json.loads(earlier.read_text()), **results}
        write_docs(results)


if __name__ == "__main__":
    main()
