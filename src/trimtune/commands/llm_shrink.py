"""``trimtune shrink --model DIR --heads 0.25 --ffn 0.25 --hidden 0.1 --drop-layers 4 --calib FILE --out DIR``:
make a causal LM directory physically smaller (fewer heads, FFN channels, hidden channels, blocks),
chosen from calibration text and repaired, one block in memory at a time
(``trimtune.prune.structured``). The output is a plain Hugging Face directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import show
from .llm_prune import calibration_samples


def add_llm_shrink_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("structured shrinking of a causal LM directory, block by block (instead of RUN_DIR)")
    g.add_argument("--model", type=Path, help="Hugging Face causal LM directory with safetensors weights (llama, mistral, qwen2; gpt2: ffn and depth)")
    g.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads to remove from every block (default: 0)")
    g.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN channels to remove from every block (default: 0)")
    g.add_argument("--hidden", type=float, default=0.0, help="fraction of hidden (embedding) channels to remove everywhere (default: 0)")
    g.add_argument("--drop-layers", type=int, default=0, help="whole blocks to remove (default: 0)")
    g.add_argument("--importance", default="fluctuation", choices=("activation", "fluctuation", "wanda"), help="structure scores (default: %(default)s)")
    g.add_argument("--depth-metric", default="block-influence", choices=("block-influence", "angular"), help="block scores (default: %(default)s)")
    g.add_argument("--repair", default="lstsq", choices=("none", "bias", "lstsq"), help="repair of o_proj/down_proj (default: %(default)s)")
    g.add_argument("--gqa", default="kv", choices=("kv", "query"),
                   help="grouped-query attention: remove whole KV groups, or the same number of query heads per group (default: %(default)s)")
    g.add_argument("--percdamp", type=float, default=0.01, help="least-squares dampening, fraction of the mean diagonal (default: %(default)s)")
    g.add_argument("--calib", metavar="FILE|self", help="calibration: a .txt file (--nsamples random windows of --seqlen tokens), "
                   "a .jsonl/.csv file (each record's text one sample) or 'self' (text sampled from the model, which is then loaded whole)")
    g.add_argument("--nsamples", type=int, default=128, help="calibration samples (default: %(default)s)")
    g.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default: %(default)s)")
    g.add_argument("--batch-tokens", type=int, default=2048, help="calibration samples run together in forwards of up to this "
                   "many tokens (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for drawing the windows (default: %(default)s)")
    g.add_argument("--speed", action="store_true", help="also time prefill (128-token prompt) and greedy decode (128 tokens), "
                   "dense vs shrunk, batch 1; this loads both whole models")


SHRINK_FIELDS = ("heads", "ffn", "hidden", "drop_layers", "importance", "depth_metric", "repair", "gqa", "percdamp",
                 "calib", "nsamples", "seqlen", "seed", "batch_tokens", "round_to")  # the flags above (--round-to: shrink.py's), and a recipe's shrink: section


def run_llm_shrink(args) -> int:
    """``trimtune shrink --model DIR ...``."""
    return shrink_model_directory(args.model, args.out, args.quiet, args.overwrite, args.speed,
                                  **{name: getattr(args, name) for name in SHRINK_FIELDS})


def shrink_model_directory(model: Path, out: Path | None, quiet: bool, overwrite: bool, speed: bool, *, heads, ffn, hidden,
                           drop_layers, importance, depth_metric, repair, gqa, percdamp, calib, nsamples, seqlen, seed,
                           batch_tokens, round_to) -> int:
    """Structured shrinking from the command line or a recipe's ``shrink:`` section: ``tt.shrink_llm_directory``."""
    import trimtune as tt
    from trimtune.outputs import STRUCTURED_REPORT_FILE, write_bytes

    if out is None:
        raise ValueError("--out is required with --model: the new directory for the shrunk model")
    if overwrite:
        raise ValueError("--overwrite is not taken with --model: the shrunk model goes to a new --out, and nothing is replaced")
    config = tt.StructuredConfig(heads, ffn, hidden, drop_layers, importance, depth_metric, repair, gqa, percdamp, batch_tokens,
                                 round_to)
    made = []  # the calibration, made once the library has checked --out and the plan: --speed prompts with it

    def calibration():
        made.append(calibration_samples(model, calib, nsamples, seqlen, seed, "--model"))
        return made[-1]

    report = tt.shrink_llm_directory(model, out, calibration, config, progress=None if quiet else "shrinking blocks")
    if speed:
        report.speed = _speed(model, out, made[-1])
        write_bytes(out / STRUCTURED_REPORT_FILE, (report.to_json() + "\n").encode())
    if not quiet:
        print(report.table(), flush=True)
    show("result", {"out": str(out), "before": report.before, "after": report.after,
                    "non_embedding_removed": round(report.removed_fraction, 6), "dropped_blocks": report.dropped_blocks})
    return 0


def _speed(dense_dir: Path, shrunk_dir: Path, samples) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from trimtune import generation_speed

    prompt = torch.as_tensor(samples[0][:128]).reshape(1, -1)
    return {name: generation_speed(AutoModelForCausalLM.from_pretrained(path), prompt, new_tokens=128)
            for name, path in (("dense", dense_dir), ("shrunk", shrunk_dir))}
