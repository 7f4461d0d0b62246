"""Calibration without data (issue 24 item 9): SmolLM2-135M pruned block by block on real text against
on its own sampled generations (``--calib self``), scored by held-out perplexity.

Calibrations (all ``--nsamples`` windows of ``--seqlen`` tokens, seed 0):
- ``real``: random windows of benchmarks/_corpus.py's ``calib`` part (Python's tutorial and library docs);
- ``self``: ``self_generated_samples`` (BOS + one uniform random token, then temperature 1, top-k 50), all
  windows in one batch (``--calib self`` samples 16 at a time, so the same seed draws other windows);
- ``random``: uniform random token ids, a floor: what calibration on text that is no language gives.
Each is streamed by ``prune_directory`` into a temporary directory, then the dense and every pruned
model are scored on the first ``--eval-tokens`` tokens of the ``heldout`` part (the HOWTOs and the
FAQ), in disjoint windows of ``--eval-seqlen``.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/self_calibration.py [--method sparsegpt|wanda]
        [--calibs real,self,random] [--nsamples 32] [--seqlen 256] [--out F.json] [--docs [--merge F.json ...]]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _corpus  # noqa: E402
import _harness  # noqa: E402
import _smollm2  # noqa: E402

BEGIN, END = "<!-- self_calibration:begin -->", "<!-- self_calibration:end -->"
ROOT = Path(__file__).resolve().parent.parent


def calibration(kind: str, model_dir: Path, tokenizer, nsamples: int, seqlen: int) -> tuple[torch.Tensor, float]:
    """(samples, seconds to make them)."""
    from transformers import AutoModelForCausalLM

    from trimtune.prune.sequential.calib_text import calibration_samples
    from trimtune.prune.sequential.self_calib import self_generated_samples

    start = time.perf_counter()
    if kind == "real":
        samples = calibration_samples(_corpus.corpus_file("calib"), tokenizer, nsamples, seqlen, seed=0)
    elif kind == "self":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        samples = self_generated_samples(model, nsamples, seqlen, seed=0, batch_size=nsamples)
        del model
        gc.collect()
    elif kind == "random":
        samples = torch.randint(0, len(tokenizer), (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    else:
        raise SystemExit(f"unknown calibration {kind!r}: real, self or random")
    return samples, time.perf_counter() - start


def held_out_perplexity(model_dir: Path, ids: torch.Tensor, seqlen: int) -> float:
    from transformers import AutoModelForCausalLM

    from trimtune.training.perplexity import perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return perplexity(model, ids, seqlen)["perplexity"]


def measure(args) -> dict:
    from transformers import AutoTokenizer

    from trimtune.core.io.text_tokens import tokenize_file
    from trimtune.prune.sequential import SequentialConfig, prune_directory

    model_dir = _smollm2.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    held_out = tokenize_file(_corpus.corpus_file("heldout"), tokenizer)[: args.eval_tokens]
    config = SequentialConfig(method=args.method, sparsity=args.sparsity)
    result = {"model": "SmolLM2-135M", "method": args.method, "sparsity": args.sparsity, "nsamples": args.nsamples,
              "seqlen": args.seqlen, "eval_tokens": len(held_out), "eval_seqlen": args.eval_seqlen, "threads": torch.get_num_threads(),
              "dense": held_out_perplexity(model_dir, held_out, args.eval_seqlen), "runs": {}}
    print(f"dense: {result['dense']:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="self_calib_"))
    try:
        for kind in args.calibs.split(","):
            samples, make_s = calibration(kind, model_dir, tokenizer, args.nsamples, args.seqlen)
            start = time.perf_counter()
            prune_directory(model_dir, work / kind, samples, config)
            prune_s = time.perf_counter() - start
            ppl = held_out_perplexity(work / kind, held_out, args.eval_seqlen)
            result["runs"][kind] = {"perplexity": ppl, "make_samples_s": make_s, "prune_s": prune_s,
                                    "example": tokenizer.decode(samples[0][:40])}
            print(f"{kind}: {ppl:.2f} (samples {make_s:.0f} s, prune {prune_s:.0f} s)", flush=True)
            shutil.rmtree(work / kind)
            if args.out:  # after every calibration: a run stopped early keeps what it measured
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


LABELS = {"real": "real text (Python docs, random windows)", "self": "self-generated (`--calib self`)",
          "random": "uniform random token ids (floor)"}


def render(results: list[dict]) -> str:
    first = results[0]
    lines = ["## Calibration without data: the model's own text (`benchmarks/self_calibration.py`, issue 24)", "",
             f"{first['model']} streamed block by block at {100 * first['sparsity']:.0f} % unstructured sparsity, calibrated on "
             f"{first['nsamples']} windows of {first['seqlen']} tokens (kept small for 2 shared cores) from each source below; "
             f"held-out perplexity on the first {first['eval_tokens']} tokens of the HOWTOs and FAQ of Python's docs "
             f"(disjoint windows of {first['eval_seqlen']}; never calibrated on). `self` draws each window from the model: "
             "BOS and one uniform random token, then sampling at temperature 1 with top-k 50, seed 0, EOS never sampled, "
             "all windows in one batch; "
             "with `trimtune prune --model DIR --calib self` the whole model is loaded to generate, then freed before the "
             "streamed prune.", "",
             "| method | calibration | held-out perplexity | × dense |", "|---|---|---|---|"]
    for result in results:
        lines.append(f"| dense | none | {result['dense']:.2f} | 1.00 |")
        for kind, run in result["runs"].items():
            lines.append(f"| {result['method']} {100 * result['sparsity']:.0f} % | {LABELS.get(kind, kind)} | {run['perplexity']:.2f} | "
                         f"{run['perplexity'] / result['dense']:.2f} |")
    lines += ["", "The first 40 tokens of sample 0 of each calibration:", ""]
    for kind, run in first["runs"].items():
        if run.get("example"):
            shown = json.dumps(run["example"])[1:-1][:200].replace("`", "'")  # a backtick would end the code span
            lines.append(f"- {kind}: `{shown}`")
    notes = [result["note"] for result in results if result.get("note")]
    lines += [""] + [f"Note: {note}." for note in notes]
    lines += ["", "Commands (figures are perplexities, CPU-independent; the wall times in the JSON are not):", "",
              "```sh"]
    for result in results:
        lines.append(f"PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/self_calibration.py --method {result['method']} "
                     f"--calibs {','.join(result['runs'])} --nsamples {result['nsamples']} --seqlen {result['seqlen']} "
                     f"--eval-tokens {result['eval_tokens']} --out {result['method']}.json")
    merges = " ".join(f"--merge {result['method']}.json" for result in results)
    lines += [f"PYTHONPATH=src python benchmarks/self_calibration.py --part none --docs {merges}", "```", ""]
    return "\n".join(lines)


def write_docs(results: list[dict]) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    old = doc.read_text()
    section = f"{BEGIN}\n{render(results)}{END}"
    new = old[: old.index(BEGIN)] + section + old[old.index(END) + len(END):] if BEGIN in old and END in old \
        else old.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="measure", choices=("measure", "none"), help="none: only render --merge files")
    parser.add_argument("--method", default="sparsegpt", choices=("sparsegpt", "wanda"))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--calibs", default="real,self,random", help="comma-separated: real, self, random (default: %(default)s)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens scored (default: %(default)s)")
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: the harness's)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--merge", type=Path, action="append", default=[], help="earlier --out files to render with --docs")
    parser.add_argument("--docs", action="store_true", help="rewrite this benchmark's section of docs/benchmarks.md")
    args = parser.parse_args()
    _harness.set_threads(args.threads)
    results = [json.loads(p.read_text()) for p in args.merge]
    if args.part == "measure":
        results.append(measure(args))
    if args.docs:
        write_docs(results)


if __name__ == "__main__":
    main()
