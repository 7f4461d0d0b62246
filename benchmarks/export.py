"""GGUF export (issue 28) on SmolLM2-135M, dense and shrunk: export time, speed in llama.cpp, and
perplexity in llama.cpp against transformers on the same text.

Parts (``--part``), each printing JSON lines and merged into one results file:

- ``checks``: the runtime tests in full (``tests/test_export_gguf.py``: logits against transformers
  in f32/f16/q8_0, greedy generation, tokenizer, shrunk/pruned/LoRA/QLoRA sources). CI skips them
  when llama-cpp-python is not installed (PyPI has only its source); this part fails instead.
- ``time``: seconds of ``trimtune export --format gguf --outtype f16`` on the dense directory, and,
  with ``--convert-script PATH`` (llama.cpp's ``convert_hf_to_gguf.py`` from a llama.cpp checkout, or
  from llama-cpp-python's source archive, which vendors it with its ``conversion/`` and ``gguf-py/``
  folders; not shipped with trimtune), the same directory through that script, interleaved rounds.
  ``--convert-python`` is the interpreter to run it with (it needs its own requirements, e.g.
  sentencepiece, which trimtune does not).
- ``speed``: llama.cpp (llama-cpp-python) prompt processing and generation tokens/s of the dense and
  the shrunk f16 exports: a ``--prompt``-token prompt, then ``--generate`` greedy tokens, batch 1,
  ``--threads`` threads, interleaved rounds.
- ``perplexity``: the same held-out tokens (transformers' tokenizer) scored by llama.cpp from the f16
  exports and by transformers in float32, in the same non-overlapping windows of ``--seqlen`` tokens.

    PYTHONPATH=src python benchmarks/export.py --part checks|time|speed|perplexity [--out results.json]
        [--dense DIR] [--shrunk DIR] [--text FILE] [--convert-script PATH [--convert-python PY]] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("TRIMTUNE_BENCH_MODELS", "/work/models"))
DENSE = MODELS / "smollm2-135m"
SHRUNK = MODELS / "shrink_bench" / "mixed_ffn_0.25__2_blocks"  # benchmarks/llm_shrink.py: FFN 25 % + 2 blocks
TEXT = MODELS / "corpus" / "heldout.txt"


def export_gguf(source: Path, out: Path, outtype: str = "f16") -> float:
    """Seconds for the whole command, as a user runs it (a fresh process: imports and loading included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trimtune", "export", str(source), "--format", "gguf", "--out", str(out),
                    "--outtype", outtype, "--overwrite", "--quiet"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - start


def part_checks(args) -> dict:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("llama-cpp-python is not installed; it compiles llama.cpp from source, e.g.\n"
                         "  CMAKE_BUILD_PARALLEL_LEVEL=2 pip install llama-cpp-python")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-rs", str(ROOT / "tests" / "test_export_gguf.py")],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    print(result.stdout[-3000:])
    last = result.stdout.strip().splitlines()[-1]
    if result.returncode != 0 or "skipped" in last:
        raise SystemExit(f"the GGUF runtime checks did not all pass: {last}")
    return {"checks": last}


def part_time(args, scratch: Path) -> dict:
    variants = {"trimtune": lambda: export_gguf(args.dense, scratch / "trimtune.gguf")}
    if args.convert_script:
        command = [str(args.convert_python or sys.executable), str(args.convert_script), str(args.dense), "--outtype", "f16", "--outfile", str(scratch / "llama.cpp.gguf")]
        variants["convert_hf_to_gguf"] = lambda: subprocess.run(command, check=True, capture_output=True)
    timings = _harness.time_variants(variants, rounds=args.rounds, warmup=1)
    result = {name: {"median_s": t.median_ms / 1e3, "spread_pct": round(t.spread_pct, 1)} for name, t in timings.items()}
    if "convert_hf_to_gguf" in timings:
        result["ratio_trimtune_over_llama_cpp"] = _harness.ratio(timings["trimtune"], timings["convert_hf_to_gguf"])
    result["bytes"] = (scratch / "trimtune.gguf").stat().st_size
    return {"export_time": result}


def _llama(path: Path, threads: int, n_ctx: int, logits_all: bool = False):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                           logits_all=logits_all, verbose=False)


def part_speed(args, scratch: Path) -> dict:
    from transformers import AutoTokenizer

    files = {name: scratch / f"{name}.gguf" for name in ("dense", "shrunk")}
    for name, source in (("dense", args.dense), ("shrunk", args.shrunk)):
        export_gguf(source, files[name])
    ids = AutoTokenizer.from_pretrained(args.dense)(TEXT.read_text(encoding="utf-8")[:20000])["input_ids"][: args.prompt]
    models = {name: _llama(path, args.threads, args.prompt + args.generate + 8) for name, path in files.items()}

    def prefill(llm):
        llm.reset()
        llm.eval(ids)

    def generate(llm):  # the prompt, then greedy tokens one at a time, as a chat turn runs
        prefill(llm)
        for _ in range(args.generate):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    pre = _harness.time_variants({n: (lambda m=m: prefill(m)) for n, m in models.items()}, rounds=args.rounds)
    both = _harness.time_variants({n: (lambda m=m: generate(m)) for n, m in models.items()}, rounds=args.rounds)
    result = {}
    for name in models:
        decode_s = (both[name].median_ms - pre[name].median_ms) / 1e3
        result[name] = {"prompt_tokens_per_s": args.prompt / (pre[name].median_ms / 1e3),
                        "generation_tokens_per_s": args.generate / decode_s, "spread_pct": round(both[name].spread_pct, 1)}
    for m in models.values():
        m.close()
    result["generation_speedup"] = result["shrunk"]["generation_tokens_per_s"] / result["dense"]["generation_tokens_per_s"]
    result["prompt_speedup"] = result["shrunk"]["prompt_tokens_per_s"] / result["dense"]["prompt_tokens_per_s"]
    return {"llama_cpp_speed": {**result, "threads": args.threads, "prompt": args.prompt, "generate": args.generate}}


def _window_nll(logits: np.ndarray, window: list[int]) -> float:
    """Summed negative log-likelihood of tokens 1.. of ``window`` given the tokens before each."""
    logits = torch.from_numpy(np.asarray(logits[:-1], dtype=np.float64))
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="sum"))


def part_perplexity(args, scratch: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trimtune.core.io.text_tokens import tokenize_file

    result = {}
    for name, source in (("dense", args.dense), ("shrunk", args.shrunk)):
        path = scratch / f"{name}.gguf"
        export_gguf(source, path)
        ids = tokenize_file(args.text, AutoTokenizer.from_pretrained(source))[: args.tokens].tolist()
        windows = [ids[i:i + args.seqlen] for i in range(0, len(ids) - 1, args.seqlen) if len(ids[i:i + args.seqlen]) > 1]
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        llm = _llama(path, args.threads, args.seqlen, logits_all=True)
        nll = {"transformers": 0.0, "llama_cpp": 0.0}
        for window in windows:
            with torch.no_grad():
                nll["transformers"] += _window_nll(model(torch.tensor([window])).logits[0].numpy(), window)
            llm.reset()
            llm.eval(window)
            nll["llama_cpp"] += _window_nll(np.array(llm.scores[: len(window)]), window)
        llm.close()
        scored = sum(len(w) - 1 for w in windows)
        ppl = {k: math.exp(v / scored) for k, v in nll.items()}
        result[name] = {**ppl, "relative_difference": ppl["llama_cpp"] / ppl["transformers"] - 1, "tokens": scored}
    return {"perplexity": {**result, "seqlen": args.seqlen, "outtype": "f16", "text": str(args.text)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", required=True, choices=("checks", "time", "speed", "perplexity"))
    parser.add_argument("--dense", type=Path, default=DENSE)
    parser.add_argument("--shrunk", type=Path, default=SHRUNK)
    parser.add_argument("--text", type=Path, default=TEXT)
    parser.add_argument("--convert-script", type=Path, help="llama.cpp's convert_hf_to_gguf.py, to time against")
    parser.add_argument("--convert-python", type=Path, help="the Python that runs --convert-script (default: this one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=128, help="speed: prompt tokens")
    parser.add_argument("--generate", type=int, default=128, help="speed: generated tokens")
    parser.add_argument("--seqlen", type=int, default=512, help="perplexity: window length")
    parser.add_argument("--tokens", type=int, default=32768, help="perplexity: held-out tokens scored")
    parser.add_argument("--out", type=Path, help="merge the results into this JSON file")
    args = parser.parse_args()
    _harness.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="export-bench-") as scratch:
        parts = {"checks": lambda: part_checks(args), "time": lambda: part_time(args, Path(scratch)),
                 "speed": lambda: part_speed(args, Path(scratch)), "perplexity": lambda: part_perplexity(args, Path(scratch))}
        result = parts[args.part]()
    print(json.dumps(result, sort_keys=True))
    if args.out:
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        args.out.write_text(json.dumps({**merged, **result}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
