"""``trimtune merge RUN_DIR`` and ``trimtune export RUN_DIR``: the run's model with its adapter,
diff and masks folded into plain weights, as a Hugging Face directory or one safetensors file."""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import add_quiet, logger

DTYPES = ("float32", "float16", "bfloat16")


def _add(subparsers, name: str, summary: str, formats: bool) -> None:
    p = subparsers.add_parser(name, help=summary, description=f"{summary}. The saved model needs no trimtune to load.")
    p.add_argument("run_dir", type=Path, help="a directory written by tune, prune or diff")
    p.add_argument("--out", type=Path, required=True, help="where to write the model")
    if formats:
        p.add_argument("--format", choices=("hf", "safetensors"), default="hf",
                       help="hf: a save_pretrained directory (with the tokenizer); safetensors: one state-dict file (default: %(default)s)")
        p.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype of the export (default: %(default)s)")
    p.add_argument("--dense", action="store_true", help="fold masks in and add the adapter densely (default keeps pruned weights zero)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_quiet(p)
    p.set_defaults(handler=run)


def add_merge(subparsers) -> None:
    _add(subparsers, "merge", "fold a run's adapter (or diff) into the base and save the merged model", formats=False)


def add_export(subparsers) -> None:
    _add(subparsers, "export", "export a run's merged model as a plain Hugging Face directory or a safetensors file", formats=True)


def merged_model(run_dir: Path, keep_sparsity: bool):
    import trimtune as tt

    from ..core.registry import method_for_config
    from ..core.state import state_of
    from ..recipes.run import load_run

    loaded = load_run(run_dir)
    configs = state_of(loaded.model).adapters
    prompts = [n for n, c in configs.items() if not method_for_config(c).mergeable]
    if prompts:
        raise ValueError(f"prompt/prefix adapters ({prompts}) are extra inputs, not weights, so they cannot be merged; "
                         "load the run's adapter/ with trimtune or peft instead")
    tt.merge(loaded.model, keep_sparsity=keep_sparsity)
    return loaded, tt.unload(loaded.model, merge_adapters=True)


def run(args) -> int:
    import torch

    from ..core.io.atomic import atomic_directory, write_safetensors

    fmt, dtype = getattr(args, "format", "hf"), getattr(torch, getattr(args, "dtype", "float32"))
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    loaded, model = merged_model(args.run_dir, keep_sparsity=not args.dense)
    model = model.to(dtype)
    if fmt == "hf" and not hasattr(model, "save_pretrained"):
        fmt = "safetensors"  # a plain torch model (the digits CNN) has no HF directory form
    if args.out.exists():
        shutil.rmtree(args.out) if args.out.is_dir() else args.out.unlink()
    if fmt == "hf":
        with atomic_directory(args.out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(tmp)
    else:
        path = args.out if args.out.suffix == ".safetensors" else args.out / "model.safetensors"
        write_safetensors(path, {k: v for k, v in model.state_dict().items()})
    logger(args)(f"merged model written to {args.out} ({fmt})")
    print(f"saved: {args.out}")
    return 0
