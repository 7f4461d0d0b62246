"""``trimtune merge RUN_DIR`` and ``trimtune export SOURCE``: the run's model with its adapter, diff and
masks folded into plain weights, as a Hugging Face directory or one safetensors file; ``--format gguf``
and ``--format onnx`` write a file for llama.cpp or onnxruntime (``export_deploy.py``)."""

from __future__ import annotations

from pathlib import Path

from .common import add_quiet, add_run_dir, logger

DTYPES = ("float32", "float16", "bfloat16")
FORMATS = ("hf", "safetensors", "gguf", "onnx")
EXPORT_KEY = "trimtune_export"  # in an exported file's metadata: --overwrite may replace only such a file


def _add(subparsers, name: str, summary: str, formats: bool) -> None:
    p = subparsers.add_parser(name, help=summary, description=f"{summary}. The saved model needs no trimtune to load.")
    if formats:
        add_run_dir(p, made_by="tune, prune, diff or shrink (gguf and onnx: also a Hugging Face model directory)", metavar="SOURCE")
    else:
        add_run_dir(p)
    p.add_argument("--out", type=Path, required=True, help="where to write the model")
    if formats:
        p.add_argument("--format", choices=FORMATS, default="hf",
                       help="hf: a save_pretrained directory (with the tokenizer); safetensors: one state-dict file; "
                            "gguf: one file for llama.cpp (causal LMs, tokenizer inside); onnx: one file for onnxruntime "
                            "(encoders with their heads, CNNs) (default: %(default)s)")
        p.add_argument("--dtype", choices=DTYPES, default="float32", help="hf/safetensors: weight dtype of the export (default: %(default)s)")
        p.add_argument("--outtype", default="f16",
                       help="gguf: tensor type, any the gguf package writes: f32, f16, bf16, q8_0, q4_0, ... (default: %(default)s)")
        p.add_argument("--merge", action="store_true",
                       help="gguf/onnx: fold the run's adapter into the weights (required when it has one; QLoRA: the 4-bit "
                            "base is dequantised and the drift reported)")
    p.add_argument("--dense", action="store_true", help="fold masks in and add the adapter densely (default keeps pruned weights zero)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_quiet(p)
    p.set_defaults(handler=run)


def add_merge(subparsers) -> None:
    _add(subparsers, "merge", "fold a run's adapter (or diff) into the base and save the merged model", formats=False)


def add_export(subparsers) -> None:
    _add(subparsers, "export", "export a run's merged model as a plain Hugging Face directory or a safetensors file, "
                               "or a model as a GGUF file for llama.cpp or an ONNX file for onnxruntime", formats=True)


def merged_model(run_dir: Path, keep_sparsity: bool, check_base: bool = True):
    import trimtune as tt

    from ..recipes.run import load_run

    loaded = load_run(run_dir, check_base=check_base)
    configs = tt.adapter_configs(loaded.model)
    prompts = [n for n, c in configs.items() if not tt.method_for_config(c).mergeable]
    if prompts:
        raise ValueError(f"prompt/prefix adapters ({prompts}) are extra inputs, not weights, so they cannot be merged; "
                         "load the run's adapter/ with trimtune or peft instead")
    if tt.active_adapters(loaded.model):  # a prune-only run has masks but no adapter to merge
        tt.merge(loaded.model, keep_sparsity=keep_sparsity)
    return loaded, tt.unload(loaded.model, merge_adapters=True)


def run(args) -> int:
    import torch

    from trimtune.outputs import OutputError, check_file_replaceable, check_replaceable, output_directory, write_safetensors

    from .export_deploy import run_deploy

    fmt, dtype = getattr(args, "format", "hf"), getattr(torch, getattr(args, "dtype", "float32"))
    if fmt in ("gguf", "onnx"):
        return run_deploy(args)
    single_file = fmt == "safetensors" and args.out.suffix == ".safetensors"
    if single_file:
        check_file_replaceable(args.out, args.overwrite, [args.run_dir], _exported_safetensors)
    else:
        check_replaceable(args.out, args.overwrite, sources=[args.run_dir])  # before any work
    loaded, model = merged_model(args.run_dir, keep_sparsity=not args.dense, check_base=args.check_base)
    model = model.to(dtype)
    if fmt == "hf" and not hasattr(model, "save_pretrained"):
        fmt = "safetensors"  # a plain torch model (the digits CNN) has no HF directory form
    state = {k: v for k, v in model.state_dict().items()}
    if single_file:
        write_safetensors(args.out, state, {"format": "pt", EXPORT_KEY: args.command})
    else:
        with output_directory(args.out, args.overwrite, args.command, sources=[args.run_dir]) as tmp:
            if fmt == "hf":
                model.save_pretrained(tmp, safe_serialization=True)
                if loaded.tokenizer is not None:
                    loaded.tokenizer.save_pretrained(tmp)
            else:
                write_safetensors(tmp / "model.safetensors", state, {"format": "pt", EXPORT_KEY: args.command})
    logger(args)(f"merged model written to {args.out} ({fmt})")
    print(f"saved: {args.out}")
    return 0


def _exported_safetensors(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return EXPORT_KEY in (f.metadata() or {})
    except Exception:  # not a safetensors file at all
        return False
