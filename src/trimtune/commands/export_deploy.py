"""``trimtune export SOURCE --format gguf|onnx``: a file for the runtime users deploy with.

GGUF (llama.cpp) for causal LMs, ONNX (onnxruntime) for encoders with their heads and CNNs. Every
refusal comes before a file is opened: the output path first (never the source or inside it,
replaced only when trimtune wrote it), then the model, tokenizer and output type. An ONNX file is
run by onnxruntime on the example inputs before it is renamed into place, and refused if its
outputs differ from PyTorch's by more than ``ONNX_TOLERANCE``.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import torch

from .common import logger, show

ONNX_TOLERANCE = 1e-4  # max |Δlogits| between onnxruntime and PyTorch on the example inputs
EXAMPLE_TEXTS = ("A short example.", "A longer example sentence, so that the two rows need padding.")


def example_inputs(source) -> dict[str, torch.Tensor]:
    """Two rows of what the model takes: digits images for an image classifier, padded texts otherwise."""
    names = list(inspect.signature(source.model.forward).parameters)
    if source.task == "image-classification":
        images = next(iter(source.loaders.loaders().train))[0][:2]
        return {names[0]: images}
    if source.tokenizer is None:
        ids = torch.randint(0, source.model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch = source.tokenizer(list(EXAMPLE_TEXTS), return_tensors="pt", padding=True)
    return {k: v for k, v in batch.items() if k in names}


def _onnx_check(model, inputs: dict[str, torch.Tensor], report: dict):
    """Run the finished file in onnxruntime before it is renamed into place; too far from PyTorch: refused."""
    import trimtune as tt

    def check(path: Path) -> None:
        report["onnxruntime_max_abs_diff"] = diff = tt.onnxruntime_difference(path, model, inputs)
        if not diff <= ONNX_TOLERANCE:
            raise tt.ExportError(f"onnxruntime's outputs differ from PyTorch's by {diff:.2e} (> {ONNX_TOLERANCE}); "
                                 "nothing was written")
    return check


def run_deploy(args) -> int:
    import trimtune as tt

    from trimtune.outputs import check_file_replaceable
    from .export_source import load_export_source

    fmt, log = args.format, logger(args)
    check_file_replaceable(args.out, args.overwrite, [args.run_dir], tt.is_trimtune_gguf if fmt == "gguf" else tt.is_trimtune_onnx)
    if fmt == "gguf":
        tt.output_type(args.outtype)  # an unknown type is refused before the model is loaded
    source = load_export_source(args.run_dir, fmt, merge=args.merge, check_base=args.check_base, keep_sparsity=not args.dense)
    report = {"format": fmt, "out": str(args.out), "source": source.kind}
    if source.drift is not None:
        report["merge_drift"] = source.drift
        log(f"merged the adapter: max |Δlogits| {source.drift['max_abs_logits']:.3g}, mean {source.drift['mean_abs_logits']:.3g} "
            f"on {source.drift['prompts']} prompts")
    start = time.perf_counter()
    if fmt == "gguf":
        tt.write_gguf(source.model, source.tokenizer, args.out, args.outtype, record={**source.record, "outtype": args.outtype})
        report["outtype"] = args.outtype
    else:
        inputs = example_inputs(source)
        tt.write_onnx(source.model, inputs, args.out, record=source.record, check=_onnx_check(source.model, inputs, report))
    report.update(seconds=round(time.perf_counter() - start, 3), bytes=Path(args.out).stat().st_size)
    log(f"{fmt} file written to {args.out}")
    show("export", report)
    return 0
