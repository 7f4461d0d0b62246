"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``<dir>/step-00000120/`` holding

- ``model.safetensors``: the trainable state (adapter deltas, masks, modules_to_save copies and
  whatever else requires grad) or, with ``full_model``, the whole state dict;
- ``trainer_state.safetensors`` + ``trainer_state.json``: optimizer, scheduler, GradScaler, the RNG
  states, the data position (``data_position.py``), step, epoch, the losses so far, and the run's
  fingerprint (base model, adapter configs, trainable names/shapes, step count, the caller's run
  config). Nested python state is JSON, its tensors safetensors (``state_files.py``); no pickle.

The directory is filled under a temporary name, fsynced and renamed in one step, so a crash or
``kill -9`` in the middle of a save leaves only a ``.step-*.tmp`` directory (ignored, and removed by
the next save) next to the intact previous checkpoints. Only the last ``keep`` are kept. Under
torch.distributed only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.config import ConfigError, check_positive_int
from ..core.io.atomic import atomic_directory, write_json, write_safetensors
from ..core.io.fingerprint import BaseMismatchError, check_fingerprint, fingerprint
from ..core.io.safetensors_files import read_safetensors
from ..core.state import state_of, wrap
from .distributed import is_main_process, unwrap_model
from .rng import capture_rng_every_rank, restore_rng_of_rank
from .state_files import decode, encode

MODEL_FILE = "model.safetensors"
STATE_TENSORS = "trainer_state.safetensors"
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
FORMAT = 1
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the previous ones are intact)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (other model, adapters, data length or run config)."""


@dataclass
class CheckpointConfig:
    """Save to ``dir`` every ``every`` optimizer steps (None: only at the end) and at the end of
    training, keeping the last ``keep``. ``full_model`` saves every tensor of the model instead
    of only the trainable state (for full fine-tuning of unfrozen bases). ``sharded``: write
    torch.distributed.checkpoint shards (``sharded_checkpoint.py``) that resume on any number of
    processes; None: when the model is sharded with FSDP."""

    dir: str | os.PathLike
    every: int | None = None
    keep: int = 2
    full_model: bool = False
    sharded: bool | None = None

    def __post_init__(self):
        if self.every is not None:
            check_positive_int("every", self.every)
        check_positive_int("keep", self.keep)
        self.dir = Path(self.dir)


def as_checkpoint_config(value) -> CheckpointConfig | None:
    if value is None or isinstance(value, CheckpointConfig):
        return value
    if isinstance(value, (str, os.PathLike)):
        return CheckpointConfig(value)
    raise ConfigError(f"checkpoint must be a CheckpointConfig or a directory path, got {type(value).__name__}")


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(model tensors, trainer state with its tensors in place) of the checkpoint at ``path``."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete trimtune checkpoint (no {STATE_FILE}); checkpoints are the step-* directories of a checkpoint dir")
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{path} has checkpoint format {state.get('format')!r}; this trimtune reads format {FORMAT}")
    tensors = read_safetensors(path / MODEL_FILE, "checkpoint's model file")[0]
    return tensors, decode(state, read_safetensors(path / STATE_TENSORS, "checkpoint's optimizer-state file")[0])


def model_state(model: nn.Module, full: bool = False) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint keeps: the trainable state, or with ``full`` the whole state dict."""
    model = unwrap_model(model)
    state = model.state_dict(keep_vars=True)
    if not full:
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if id(v) in trainable or k.endswith("weight_mask") or ".deltas." in k or ".copies." in k}
    return {k: v.detach() for k, v in state.items()}


@torch.no_grad()
def load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    model = unwrap_model(model)
    state = model.state_dict(keep_vars=True)
    for key, value in tensors.items():
        target = state.get(key)
        if target is None and key.endswith(".weight_mask"):  # a mask pruning set during training, on a layer
            wrap(model, key.rsplit(".", 1)[0]).set_mask(value)  # a fresh model has not wrapped yet
        elif target is None:
            raise CheckpointMismatchError(f"{source} holds {key!r}, which the model does not have: it was saved from another model or adapter setup")
        elif target.shape != value.shape:
            raise CheckpointMismatchError(f"{source} holds {key!r} of shape {tuple(value.shape)}, the model's is {tuple(target.shape)}")
        else:
            target.copy_(value)


def run_fingerprint(model: nn.Module, total_steps: int | None, run_config: dict | None) -> dict:
    """What must match for a checkpoint to continue this run."""
    model = unwrap_model(model)
    trainable = "\n".join(f"{n}:{list(p.shape)}" for n, p in model.named_parameters() if p.requires_grad)
    adapters = {name: _config_dict(config) for name, config in state_of(model).adapters.items()}
    return {
        "base": fingerprint(model),
        "adapters": json.loads(json.dumps(adapters, sort_keys=True, default=_name_of)),
        "trainable_sha256": hashlib.sha256(trainable.encode()).hexdigest(),
        "total_steps": total_steps,
        "run_config": json.loads(json.dumps(run_config, sort_keys=True, default=_name_of)),
    }


def check_run(saved: dict, current: dict, model: nn.Module, path: Path) -> None:
    """Raise ``CheckpointMismatchError`` naming what differs between the checkpoint's run and this one."""
    where = f"checkpoint {path} is from another run"
    if saved["run_config"] != current["run_config"]:
        keys = _differing_keys(saved["run_config"], current["run_config"])
        raise CheckpointMismatchError(f"{where}: its run config differs in {', '.join(keys)}. Resume with the same config, or start a new run in another directory")
    try:
        check_fingerprint(saved["base"], unwrap_model(model), f"checkpoint {path}")
    except BaseMismatchError as error:
        raise CheckpointMismatchError(f"{where}: {error}") from None
    if saved["adapters"] != current["adapters"]:
        raise CheckpointMismatchError(f"{where}: its adapters {saved['adapters']} differ from the model's {current['adapters']}")
    if saved["trainable_sha256"] != current["trainable_sha256"]:
        raise CheckpointMismatchError(f"{where}: it trained other parameters (names or shapes differ from the model's trainable ones)")
    if saved["total_steps"] != current["total_steps"]:
        raise CheckpointMismatchError(
            f"{where}: it was planned for {saved['total_steps']} steps, this run for {current['total_steps']} "
            "(epochs, max_steps, grad_accum or the data length changed); the LR schedule would not continue"
        )


class Checkpointer:
    """Used by ``train``: saves and restores checkpoints of one run."""

    def __init__(self, config: CheckpointConfig, model: nn.Module, total_steps: int | None, run_config: dict | None):
        self.config = config
        self.fingerprint = run_fingerprint(model, total_steps, run_config)  # before any weight changes
        self.last_saved: int | None = None

    def due(self, step: int) -> bool:
        return self.config.every is not None and step % self.config.every == 0

    def save(self, ctx, position, result, scaler) -> Path | None:
        """Write the checkpoint of step ``ctx.step`` (rank 0 only); returns its path."""
        self.last_saved = ctx.step
        rngs = capture_rng_every_rank()  # a collective: before the other ranks return
        if not is_main_process():
            return None
        tensors: dict[str, torch.Tensor] = {}
        state = encode(self._trainer_state(ctx, position, result, scaler, rngs), tensors, "state")
        path = self.config.dir / f"step-{ctx.step:08d}"
        self._remove_partial_saves()
        try:
            with atomic_directory(path) as tmp:
                write_safetensors(tmp / MODEL_FILE, model_state(ctx.model, self.config.full_model))
                write_safetensors(tmp / STATE_TENSORS, tensors)
                write_json(tmp / STATE_FILE, state)
        except OSError as error:
            raise CheckpointError(self._failure(ctx.step, error)) from error
        self._remove_old()
        return path

    def restore(self, path: Path, ctx, position, result, scaler) -> None:
        tensors, state = read_checkpoint(path)
        check_run(state["run"], self.fingerprint, ctx.model, path)
        restore_callback_parameters(state.get("callback_parameters", []), path, ctx)  # before the optimizer: it checks they match
        load_model_state(ctx.model, tensors, f"checkpoint {path}")
        ctx.optimizer.load_state_dict(state["optimizer"])
        restore_trainer_state(state, path, ctx, position, result, scaler)
        self.last_saved = ctx.step

    def _trainer_state(self, ctx, position, result, scaler, rngs: list[dict]) -> dict:
        return {
            "format": FORMAT,
            "step": ctx.step,
            "epoch": ctx.epoch,
            "position": position.state(),
            "optimizer": ctx.optimizer.state_dict(),
            "scheduler": ctx.scheduler.state_dict() if ctx.scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rngs[0],  # rank 0's streams (what checkpoints before per-rank streams held)
            "rng_ranks": rngs,  # every rank's, in rank order
            "losses": result.losses,
            "grad_norms": result.grad_norms,
            "eval_history": [[step, metrics] for step, metrics in result.eval_history],
            "callback_parameters": [p.detach().cpu().clone() for p in ctx.callback_parameters],
            "run": self.fingerprint,
        }

    def _failure(self, step: int, error: OSError) -> str:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        previous = latest_checkpoint(self.config.dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return f"could not write the checkpoint of step {step} to {self.config.dir}: {reason}; {kept}. Free space or choose another checkpoint dir, then resume"

    def _remove_partial_saves(self) -> None:
        for leftover in self.config.dir.glob(".step-*.tmp"):  # from a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)

    def _remove_old(self) -> None:
        for old in list_checkpoints(self.config.dir)[: -self.config.keep]:
            shutil.rmtree(old, ignore_errors=True)


def _config_dict(config) -> dict:
    if dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {"type": type(config).__name__}


def _name_of(obj) -> str:
    """JSON stand-in for callables, types and other objects: a name stable across runs (no address)."""
    return getattr(obj, "__qualname__", type(obj).__qualname__)


def _differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".") or "the whole config"] if a != b else []


@torch.no_grad()
def restore_callback_parameters(saved: list, path, ctx) -> None:
    """Callbacks' own trained parameters (distillation's width maps) back to their saved values."""
    shapes = [tuple(t.shape) for t in saved]
    wanted = [tuple(p.shape) for p in ctx.callback_parameters]
    if shapes != wanted:
        raise CheckpointMismatchError(
            f"checkpoint {path} holds callback parameters of shapes {shapes}, this run's callbacks train {wanted} "
            "(e.g. distillation's hidden_layers differ); resume with the same callbacks"
        )
    for param, value in zip(ctx.callback_parameters, saved):
        param.copy_(value.to(param.device, param.dtype))


def restore_trainer_state(state: dict, path, ctx, position, result, scaler) -> None:
    """Scheduler, scaler, step counters, data position, history and RNG streams from a checkpoint's state
    (the model and optimizer tensors are restored by the caller, whole or sharded)."""
    if (state["scheduler"] is None) != (ctx.scheduler is None):
        raise CheckpointMismatchError(f"checkpoint {path} was saved {'without' if ctx.scheduler else 'with'} an LR scheduler; resume with the same setup")
    if ctx.scheduler is not None:
        ctx.scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    ctx.step, ctx.epoch = state["step"], state["epoch"]
    position.resume(state["position"])
    result.losses, result.grad_norms = list(state["losses"]), list(state["grad_norms"])
    result.eval_history = [(step, metrics) for step, metrics in state["eval_history"]]
    result.steps = ctx.step
    restore_rng_of_rank(state.get("rng_ranks") or [state["rng"]])  # each rank its own streams
