"""``trimtune eval --model DIR --perplexity FILE``: perplexity of a causal LM directory (for example a
pruned one) on a local text file, with sliding windows (``trimtune.train.perplexity``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import show


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("perplexity of a causal LM directory (instead of RUN_DIR)")
    g.add_argument("--perplexity", type=Path, metavar="FILE", help="local text file to measure perplexity on")
    g.add_argument("--model", type=Path, help="Hugging Face causal LM directory (default: RUN_DIR given positionally)")
    g.add_argument("--seqlen", type=int, help="window length in tokens (default: the model's positions, at most 2048)")
    g.add_argument("--stride", type=int, help="tokens between window starts (default: seqlen, disjoint windows)")


def run_perplexity(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trimtune import perplexity_of_file

    from ..models import load_pretrained

    model_dir = args.model or args.run_dir
    if model_dir is None:
        raise ValueError("--perplexity needs a model: pass --model DIR (a Hugging Face causal LM directory)")
    # safetensors only (never unpickled), and every weight from the file: a head made up on load scores nothing
    model = load_pretrained(AutoModelForCausalLM, model_dir, trained_for="a causal LM for --perplexity").eval()
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048
    seqlen = args.seqlen if args.seqlen is not None else min(limit, 2048)  # --seqlen 0 is refused, not replaced
    metrics = perplexity_of_file(model, AutoTokenizer.from_pretrained(model_dir), args.perplexity, seqlen, args.stride)
    metrics["seqlen"] = seqlen
    show("perplexity", metrics)
    return 0
