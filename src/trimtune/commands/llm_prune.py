"""``trimtune prune --model DIR --method sparsegpt --sparsity 2:4 --calib FILE --out DIR``: prune a
Hugging Face causal LM (or BERT) directory one block at a time, streaming its weights from disk
(``trimtune.prune.sequential``). ``trimtune prune RECIPE`` (mask pruning by recipe) is unchanged."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import show


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("block-by-block pruning of a model directory (instead of RECIPE)")
    g.add_argument("--model", type=Path, help="Hugging Face model directory with safetensors weights (llama, mistral, qwen2, gpt2, bert)")
    g.add_argument("--method", default="sparsegpt", choices=("magnitude", "wanda", "sparsegpt"), help="default: %(default)s")
    g.add_argument("--sparsity", default="0.5", help="fraction of weights to prune per layer, or N:M such as 2:4 (default: %(default)s)")
    g.add_argument("--calib", metavar="FILE|self",
                   help="calibration (wanda, sparsegpt; magnitude reads none): a .txt file (--nsamples random windows of --seqlen "
                        "tokens), a .jsonl/.csv file (each record's 'text' one sample, cut to --seqlen tokens; --nsamples records "
                        "drawn when it holds more), or 'self': windows sampled from the model itself, for when you have no text "
                        "(the whole model is loaded to generate, then freed before the streamed prune)")
    g.add_argument("--nsamples", type=int, default=128, help="calibration samples (default: %(default)s)")
    g.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window; the longest a record's text may be (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed for drawing the windows or records, or for sampling with 'self' (default: %(default)s)")
    g.add_argument("--batch-tokens", type=int, default=2048,
                   help="calibration samples run together in forwards of up to this many tokens, padding included "
                        "(more: faster, more activation memory) (default: %(default)s)")
    g.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block (default: %(default)s)")
    g.add_argument("--percdamp", type=float, default=0.01, help="SparseGPT dampening, fraction of the mean Hessian diagonal (default: %(default)s)")
    g.add_argument("--selection", default="exact", choices=("exact", "reference"),
                   help="SparseGPT's unstructured mask per column block: exact = round(sparsity x entries); reference = the "
                        "reference code's and llm-compressor's <= threshold (one entry more, plus ties) (default: %(default)s)")
    g.add_argument("--owl", action="store_true", help="OWL: per-block sparsity from outlier ratios (wanda, sparsegpt)")
    g.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold, multiples of the block mean (default: %(default)s)")
    g.add_argument("--owl-lambda", type=float, default=0.08, help="OWL's lambda: block sparsities span 2 x lambda around --sparsity (one block can move up to 2 x lambda); "
                        "at most min(s, 1 - s) / 2 always fits (default: %(default)s)")


def calibration_samples(args, needed_with: str):
    """The calibration ``--calib FILE|self`` gives (checked first: counts, the model's positions), with
    its one-line summary printed; ``needed_with`` names the flags that require it."""
    from transformers import AutoConfig

    from ..data.calibration import load_calibration
    from ..prune.sequential.calib_text import check_counts
    from ..prune.sequential.pipeline import check_seqlen

    if args.calib is None:
        raise ValueError(f"--calib FILE|self is required with {needed_with}: a text file (.txt, .jsonl, .csv) to calibrate on, "
                         "or 'self' to sample calibration text from the model")
    check_counts(args.nsamples, args.seqlen)
    check_seqlen(AutoConfig.from_pretrained(args.model), args.seqlen)
    calibration = load_calibration(args.calib, Path(args.model), args.nsamples, args.seqlen, args.seed)
    show("calibration", calibration.summary)
    return calibration.samples


def run_llm(args) -> int:
    from ..prune.sequential import SequentialConfig
    from ..prune.sequential.stream import check_out, prune_directory

    if args.out is None:
        raise ValueError("--out is required with --model: the new directory for the pruned model")
    if getattr(args, "overwrite", False):  # a pruned directory carries no run marker: nothing to tell ours from others'
        raise ValueError(f"--overwrite is not supported with --model: the pruned model always goes to a new directory; "
                         f"remove {args.out} yourself or choose another --out")
    config = SequentialConfig(args.method, args.sparsity, args.blocksize, args.percdamp, args.owl, args.owl_m, args.owl_lambda,
                              args.selection, args.batch_tokens)
    check_out(Path(args.out), Path(args.model))  # before calibration, which may generate for minutes
    samples = None  # magnitude needs no activations: no calibration text is read
    if config.needs_calibration:
        samples = calibration_samples(args, f"--model --method {args.method}")
    report = prune_directory(args.model, args.out, samples, config, progress=None if args.quiet else "pruning blocks")
    if not args.quiet:
        print(report.table(), flush=True)
    show("result", {"out": str(args.out), "sparsity": round(report.sparsity, 6), "layers": len(report.layers), "method": args.method})
    return 0
