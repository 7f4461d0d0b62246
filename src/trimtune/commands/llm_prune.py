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


ONESHOT_FIELDS = ("method", "sparsity", "calib", "nsamples", "seqlen", "seed", "blocksize", "percdamp", "owl", "owl_m",
                  "owl_lambda", "selection", "batch_tokens")  # the flags above, and a recipe's oneshot: section


def calibration_samples(model: Path, calib, nsamples: int, seqlen: int, seed: int, needed_with: str):
    """The calibration ``--calib FILE|self`` gives (checked first: counts, the model's positions), with
    its one-line summary printed; ``needed_with`` names the flags that require it."""
    from ..data.calibration import load_calibration

    if calib is None:
        raise ValueError(f"--calib FILE|self is required with {needed_with}: a text file (.txt, .jsonl, .csv) to calibrate on, "
                         "or 'self' to sample calibration text from the model")
    calibration = load_calibration(calib, Path(model), nsamples, seqlen, seed)
    show("calibration", calibration.summary)
    return calibration.samples


def run_llm(args) -> int:
    """``trimtune prune --model DIR ...``."""
    return prune_model_directory(args.model, args.out, args.quiet, getattr(args, "overwrite", False),
                                 **{name: getattr(args, name) for name in ONESHOT_FIELDS})


def prune_model_directory(model: Path, out: Path | None, quiet: bool, overwrite: bool, *, method, sparsity, calib, nsamples,
                          seqlen, seed, blocksize, percdamp, owl, owl_m, owl_lambda, selection, batch_tokens) -> int:
    """One-shot pruning from the command line or a recipe's ``oneshot:`` section: ``tt.prune_llm``."""
    import trimtune as tt

    if out is None:
        raise ValueError("--out is required with --model: the new directory for the pruned model")
    if overwrite:  # a pruned directory carries no run marker: nothing to tell ours from others'
        raise ValueError(f"--overwrite is not supported with --model: the pruned model always goes to a new directory; "
                         f"remove {out} yourself or choose another --out")
    config = tt.SequentialConfig(method, sparsity, blocksize, percdamp, owl, owl_m, owl_lambda, selection, batch_tokens)

    def calibration():  # made after tt.prune_llm has checked --out: 'self' may generate for minutes
        return calibration_samples(model, calib, nsamples, seqlen, seed, f"--model --method {method}")

    report = tt.prune_llm(model, out, config, calibration, progress=None if quiet else "pruning blocks")
    if not quiet:
        print(report.table(), flush=True)
    show("result", {"out": str(out), "sparsity": round(report.sparsity, 6), "layers": len(report.layers), "method": method})
    return 0
