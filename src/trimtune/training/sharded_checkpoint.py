"""Sharded training checkpoints (torch.distributed.checkpoint) for runs under FSDP2.

A sharded checkpoint is the directory of ``checkpoint.py`` with the trainable tensors and the
optimizer's tensors in ``sharded/`` instead of the trainer-state files:

- ``sharded/*.safetensors``: written by DCP, every rank its own slice (each file records the
  offsets of its slices in its safetensors metadata). DCP reshards on load, so a checkpoint of 2
  processes resumes on 1 or 4, and one written by 1 process (``CheckpointConfig(sharded=True)``)
  resumes on 2. We use DCP's safetensors storage (``HuggingFaceStorageWriter/Reader``) rather
  than its default one, whose ``.metadata`` file is Python-serialised (reading it could run code):
  everything a resume reads is safetensors or JSON.
- ``model.safetensors``: the complete trainable state, gathered (every rank's slice), for tools that
  read one file; ``trainer_state.json`` + ``trainer_state.safetensors``: step, data position, RNG,
  scheduler, losses, the optimizer's param groups (its per-parameter tensors are in ``sharded/``).

Every rank calls save and restore (they are collectives). The directory is filled under the fixed
name ``.step-N.tmp`` (every rank must find it) and renamed by rank 0 once everything is written, so
a ``kill -9`` of any rank mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from ..core.io.atomic import write_json, write_safetensors
from ..core.io.gather import gathered, wait_for_writer, writes_files
from ..core.io.safetensors_files import read_safetensors
from .checkpoint import (
    FORMAT,
    MODEL_FILE,
    STATE_FILE,
    STATE_TENSORS,
    Checkpointer,
    CheckpointError,
    CheckpointMismatchError,
    check_run,
    model_state,
    restore_callback_parameters,
    restore_trainer_state,
)
from .fsdp import is_sharded
from .rng import capture_rng_every_rank
from .state_files import decode, encode

SHARDED_DIR = "sharded"
_OPTIMIZER = "optimizer"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def make_checkpointer(config, model: nn.Module, total_steps, run_config, resume_from: Path | None = None) -> Checkpointer:
    """A ``ShardedCheckpointer`` when the model is sharded with FSDP, ``config.sharded`` asks for
    one, or the run resumes from a sharded checkpoint; the single-file ``Checkpointer`` otherwise."""
    sharded = config.sharded
    if sharded is None:
        sharded = is_sharded(model) or (resume_from is not None and is_sharded_checkpoint(resume_from))
    if is_sharded(model) and not sharded:
        raise CheckpointMismatchError("the model is sharded with FSDP: its checkpoints must be sharded (CheckpointConfig(sharded=None or True))")
    if is_sharded(model) and config.full_model:
        raise CheckpointMismatchError("full_model checkpoints of an FSDP-sharded model are not supported: checkpoint the trainable state (full_model=False)")
    return (ShardedCheckpointer if sharded else Checkpointer)(config, model, total_steps, run_config)


class ShardedCheckpointer(Checkpointer):
    """``Checkpointer`` for FSDP runs: DCP for the tensors, the rest as in ``checkpoint.py``."""

    def save(self, ctx, position, result, scaler) -> Path | None:
        self.last_saved = ctx.step
        path = self.config.dir / f"step-{ctx.step:08d}"
        tmp = self.config.dir / f".{path.name}.tmp"
        if writes_files():
            self._remove_partial_saves()
            tmp.mkdir(parents=True)
        wait_for_writer()
        rngs = capture_rng_every_rank()  # a collective, as is the rest of the save
        tensors, optimizer_groups = _training_tensors(ctx.model, ctx.optimizer)
        try:
            _dcp_save(tensors, tmp / SHARDED_DIR)
            full = gathered(model_state(ctx.model))  # collective: every rank's slice, rank 0 writes
            if writes_files():
                trainer = self._trainer_state(ctx, position, result, scaler, rngs)
                trainer["optimizer"] = {"param_groups": optimizer_groups}
                state_tensors: dict[str, torch.Tensor] = {}
                state = encode(trainer, state_tensors, "state")
                write_safetensors(tmp / MODEL_FILE, full)
                write_safetensors(tmp / STATE_TENSORS, state_tensors)
                write_json(tmp / STATE_FILE, state)
                _fsync_tree(tmp)
                os.replace(tmp, path)
                self._remove_old()
        except OSError as error:
            raise CheckpointError(self._failure(ctx.step, error)) from error
        wait_for_writer()
        return path if writes_files() else None

    def restore(self, path: Path, ctx, position, result, scaler) -> None:
        if not is_sharded_checkpoint(path):
            raise CheckpointMismatchError(
                f"checkpoint {path} is a single-file checkpoint; a sharded (FSDP) run resumes from sharded checkpoints only "
                "(resume it with the strategy it was written with)")
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("format") != FORMAT:
            raise CheckpointMismatchError(f"{path} has checkpoint format {state.get('format')!r}; this trimtune reads format {FORMAT}")
        state = decode(state, read_safetensors(path / STATE_TENSORS, "checkpoint's optimizer-state file")[0])
        check_run(state["run"], self.fingerprint, ctx.model, path)
        restore_callback_parameters(state.get("callback_parameters", []), path, ctx)
        _load_training_tensors(ctx.model, ctx.optimizer, path / SHARDED_DIR, state["optimizer"]["param_groups"])
        restore_trainer_state(state, path, ctx, position, result, scaler)
        self.last_saved = ctx.step


def _training_tensors(model: nn.Module, optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """The tensors DCP saves or loads in place, flat under string keys: the trainable state (DTensors
    under FSDP) and the optimizer's per-parameter state keyed by parameter name (so it maps onto any
    world size); and the optimizer's param groups (plain values) for the JSON file."""
    tensors = {f"model/{k}": v for k, v in model_state(model).items()}
    optim = get_optimizer_state_dict(model, optimizer)  # initialises empty state (zero step, lr 0) when needed
    for name, values in optim["state"].items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"optimizer state {name}.{key} is a {type(value).__name__}; sharded checkpoints hold tensors only")
            tensors[f"{_OPTIMIZER}/{name}/{key}"] = value
    return tensors, optim["param_groups"]


def _load_training_tensors(model: nn.Module, optimizer, directory: Path, param_groups: list) -> None:
    tensors, _ = _training_tensors(model, optimizer)
    _dcp_load(tensors, directory)  # in place: the model tensors alias the parameters (each rank its slice)
    optim = get_optimizer_state_dict(model, optimizer)
    for name, values in optim["state"].items():
        for key in values:
            values[key] = tensors[f"{_OPTIMIZER}/{name}/{key}"]
    optim["param_groups"] = param_groups
    set_optimizer_state_dict(model, optimizer, optim)


def _dcp_save(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))


def _dcp_load(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    try:
        dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(directory)))
    except Exception as error:  # DCP wraps each rank's failure; name the checkpoint and the likely cause
        raise CheckpointMismatchError(f"cannot load the sharded checkpoint {directory.parent}: {error}") from error


def _fsync_tree(directory: Path) -> None:
    for file in [*directory.rglob("*"), directory]:
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
