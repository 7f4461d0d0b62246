"""``trimtune eval --model DIR --perplexity FILE``: perplexity of a causal LM directory (for example a
pruned one) on a local text file, with sliding windows (``trimtune.train.perplexity``).
``trimtune eval RUN_DIR --perplexity FILE`` scores the run's model as the run left it, its adapter
unmerged."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import show


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("perplexity of a causal LM directory (instead of RUN_DIR)")
    g.add_argument("--perplexity", type=Path, metavar="FILE", help="local text file to measure perplexity on")
    g.add_argument("--model", type=Path, help="Hugging Face causal LM directory (default: RUN_DIR given positionally: a "
                   "Hugging Face directory, or a run or shrink directory, scored with its adapter unmerged)")
    g.add_argument("--seqlen", type=int, help="window length in tokens (default: the model's positions, at most 2048)")
    g.add_argument("--stride", type=int, help="tokens between window starts (default: seqlen, disjoint windows)")


def run_perplexity(args) -> int:
    from trimtune import perplexity_of_file

    model_dir = args.model or args.run_dir
    if model_dir is None:
        raise ValueError("--perplexity needs a model: pass --model DIR (a Hugging Face causal LM directory)")
    model, tokenizer = load_causal_lm(model_dir, getattr(args, "check_base", True), "--perplexity")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048
    seqlen = args.seqlen if args.seqlen is not None else min(limit, 2048)  # --seqlen 0 is refused, not replaced
    metrics = perplexity_of_file(model, tokenizer, args.perplexity, seqlen, args.stride)
    metrics["seqlen"] = seqlen
    show("perplexity", metrics)
    return 0


def load_causal_lm(path: Path, check_base: bool, purpose: str):
    """(model in eval mode, tokenizer) for a Hugging Face causal LM directory, or for a run or shrink
    directory as that run left it (its adapter unmerged, so what is scored is what was trained)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import load_pretrained
    from ..recipes.rebuild import is_run_dir, is_shrink_dir, load_run_or_shrink

    path = Path(path)
    if is_run_dir(path) or is_shrink_dir(path):
        run = load_run_or_shrink(path, check_base=check_base)
        if run.recipe.model.task != "causal-lm":
            raise ValueError(f"{purpose} needs a causal LM; the run in {path} has model.task {run.recipe.model.task!r}")
        return run.model.eval(), run.tokenizer
    # safetensors only (never unpickled), and every weight from the file: a head made up on load scores nothing
    model = load_pretrained(AutoModelForCausalLM, path, trained_for=f"a causal LM for {purpose}").eval()
    return model, AutoTokenizer.from_pretrained(path)
