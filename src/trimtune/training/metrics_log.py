"""``MetricsLogger``: a training callback that reports per-step loss, learning rate and gradient
norm, and the evaluation metrics, as plain log lines (python ``logging``, logger
``trimtune.train``), optionally as a CSV file and, when the ``tensorboard`` package is installed,
as TensorBoard scalars. Under torch.distributed only rank 0 reports.

The CSV is long-format, one value per row (``step,epoch,split,name,value``; split is ``train`` or
``eval``), so evaluation metrics of any name fit one file. A resumed run drops the rows after the
step it resumed from and appends, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import torch

from ..core.config import ConfigError, check_positive_int
from ..core.io.atomic import write_bytes
from .distributed import is_main_process

log = logging.getLogger("trimtune.train")
CSV_FIELDS = ("step", "epoch", "split", "name", "value")


class MetricsLogger:
    def __init__(self, csv_path: str | os.PathLike | None = None, tensorboard_dir: str | os.PathLike | None = None, every: int = 1):
        check_positive_int("every", every)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.tensorboard_dir = tensorboard_dir
        self.every = every
        self._csv = self._writer = self._tensorboard = None
        self._lr = self._grad_norm = None

    def on_train_start(self, ctx) -> None:
        if not is_main_process():
            return
        if self.csv_path is not None:
            self._open_csv(ctx.step)
        if self.tensorboard_dir is not None:
            self._tensorboard = _summary_writer(self.tensorboard_dir, purge_step=ctx.step + 1 if ctx.step else None)

    def after_optimizer_step(self, ctx) -> None:
        """The LR this step used and its gradient norm (before clipping when the loop clipped)."""
        if ctx.step % self.every == 0:
            self._lr = ctx.optimizer.param_groups[0]["lr"]
            self._grad_norm = ctx.grad_norm if ctx.grad_norm is not None else _grad_norm(ctx.optimizer)

    def on_step_end(self, ctx, step: int, loss: float | None) -> None:
        if step % self.every or not is_main_process():
            return
        values = {"loss": loss, "lr": self._lr, "grad_norm": self._grad_norm}
        values = {k: v for k, v in values.items() if v is not None}
        total = f"/{ctx.total_steps}" if ctx.total_steps else ""
        log.info("step %d%s epoch %d: %s", step, total, ctx.epoch + 1, _format(values))
        self._record(ctx, step, "train", values)

    def on_eval(self, ctx, step: int, metrics: dict[str, float]) -> None:
        if not is_main_process():
            return
        log.info("eval at step %d: %s", step, _format(metrics))
        self._record(ctx, step, "eval", metrics)

    def on_train_end(self, ctx, result) -> None:
        self.close()

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _record(self, ctx, step: int, split: str, values: dict[str, float]) -> None:
        if self._writer is not None:
            self._writer.writerows([step, ctx.epoch, split, name, value] for name, value in values.items())
            self._csv.flush()
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def _open_csv(self, resumed_step: int) -> None:
        """Start the file, or keep the rows up to the step a resumed run continues from."""
        kept = []
        if resumed_step and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resumed_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_bytes(self.csv_path, text.getvalue().encode())
        self._csv = open(self.csv_path, "a", newline="")
        self._writer = csv.writer(self._csv, lineterminator="\n")


def _grad_norm(optimizer) -> float | None:
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None


def _summary_writer(directory, purge_step):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard_dir needs the tensorboard package (pip install tensorboard); use csv_path for metrics without it") from None
    return SummaryWriter(str(directory), purge_step=purge_step)


def _format(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in values.items())
