"""One-shot pruning of a large language model on disk: the library's entry point, which
``trimtune prune --model DIR`` and a recipe's ``oneshot:`` section both call."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..sparsity_report import SparsityReport
from .config import SequentialConfig
from .stream import check_out, prune_directory


def prune_llm(model_dir: str | os.PathLike, out: str | os.PathLike, config: SequentialConfig, calibration=None,
              progress: str | None = None) -> SparsityReport:
    """Prune the Hugging Face model in ``model_dir`` block by block, streaming its weights, into the new
    directory ``out``; returns the sparsity report (also written into ``out``).

    ``calibration``: token-id samples in any form ``prune_sequential`` takes, or a function returning
    them. A function is called only once ``out`` has been checked, since making samples (reading a long
    text, or generating with the whole model) can take minutes. Magnitude pruning reads none."""
    model_dir, out = Path(model_dir), Path(out)
    check_out(out, model_dir)
    samples = None
    if config.needs_calibration:
        if calibration is None:
            raise ValueError(f"method {config.method!r} calibrates on the model's activations: give calibration samples "
                             "(token ids, or a function returning them)")
        samples = calibration() if isinstance(calibration, Callable) else calibration
    return prune_directory(model_dir, out, samples, config, progress=progress)
