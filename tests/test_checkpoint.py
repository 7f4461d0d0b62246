"""Checkpoints and exact resume: an interrupted run ends with the weights of an uninterrupted one."""

import copy
import errno
import json

import pytest
import torch
from torch.utils.data import DataLoader

import trimtune as tt
from trimtune.training.checkpoint import list_checkpoints, read_checkpoint

from _training_helpers import Interrupt, InterruptAt

STEPS_PER_EPOCH, EPOCHS = 6, 2


def _data():
    generator = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": torch.randint(3, 100, (9,), generator=generator), "labels": torch.randint(0, 3, (), generator=generator)}
        for _ in range(4 * STEPS_PER_EPOCH)
    ]
    return DataLoader(examples, batch_size=4, shuffle=True)  # the default RandomSampler: global RNG


def _adapted(base):
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    tt.apply(model, tt.LoraConfig(r=4, dropout=0.1, init="gaussian", modules_to_save=["classifier"]))
    return model


def _run(model, directory, **kwargs):
    torch.manual_seed(2)  # the resumed run must not depend on this: its RNG comes from the checkpoint
    return tt.train(
        model, _data(), epochs=EPOCHS, lr=1e-2, scheduler=tt.linear_schedule(2), progress=False,
        checkpoint=tt.CheckpointConfig(directory, every=2, keep=2), run_config={"lr": 1e-2, "seed": 2}, **kwargs,
    )


def _trainables(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("interrupt_at", [5, 7, 9])  # mid epoch 1, just after the epoch boundary, mid epoch 2
def test_resumed_run_ends_with_the_same_weights(tiny_bert, tmp_path, interrupt_at):
    assert tiny_bert.config.hidden_dropout_prob > 0  # dropout draws from the RNG the checkpoint must restore
    reference = _adapted(tiny_bert)
    expected = _run(reference, tmp_path / "reference")

    interrupted = _adapted(tiny_bert)
    with pytest.raises(Interrupt):
        _run(interrupted, tmp_path / "run", callbacks=[InterruptAt(interrupt_at)])
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == f"step-{interrupt_at - 1:08d}"

    torch.manual_seed(123)  # another process: other RNG state
    resumed = _adapted(tiny_bert)
    result = _run(resumed, tmp_path / "run", resume=True)
    assert result.steps == STEPS_PER_EPOCH * EPOCHS
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    want = _trainables(reference)
    got = _trainables(resumed)
    assert got.keys() == want.keys() and any("classifier" in n for n in got)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], atol=1e-6, rtol=0, msg=name)
    assert not torch.equal(got[next(iter(got))], _trainables(_adapted(tiny_bert))[next(iter(got))])  # it trained


def test_checkpoint_holds_the_trainable_state_only_and_keeps_the_last_k(tiny_bert, tmp_path):
    model = _adapted(tiny_bert)
    _run(model, tmp_path)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000010", "step-00000012"]
    tensors, state = read_checkpoint(tmp_path / names[-1])
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert state["step"] == 12 and state["position"]["epoch"] == 1 and state["position"]["batches"] == STEPS_PER_EPOCH
    assert len(state["losses"]) == 12
    assert all(isinstance(v, torch.Tensor) for v in state["optimizer"]["state"][0].values())
    json.loads((tmp_path / names[-1] / "trainer_state.json").read_text())  # plain JSON, no pickle anywhere
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*/*.bin"))


def test_full_model_checkpoint(tiny_bert, tmp_path):
    model = _adapted(tiny_bert)
    tt.train(model, _data(), max_steps=1, progress=False, checkpoint=tt.CheckpointConfig(tmp_path, full_model=True))
    tensors, _ = read_checkpoint(latest := list_checkpoints(tmp_path)[-1])
    assert set(tensors) == set(model.state_dict()), latest


def test_resume_from_another_run_is_refused(tiny_bert, tmp_path):
    _run(_adapted(tiny_bert), tmp_path)
    other = _adapted(tiny_bert)
    with pytest.raises(tt.CheckpointMismatchError, match=r"run config differs in lr"):
        tt.train(other, _data(), epochs=EPOCHS, lr=1e-3, progress=False, scheduler=tt.linear_schedule(2),
                 checkpoint=tt.CheckpointConfig(tmp_path), run_config={"lr": 1e-3, "seed": 2}, resume=True)
    rank8 = copy.deepcopy(tiny_bert)
    tt.apply(rank8, tt.LoraConfig(r=8, modules_to_save=["classifier"]))
    with pytest.raises(tt.CheckpointMismatchError, match="adapters"):
        _run(rank8, tmp_path, resume=True)
    torch.manual_seed(5)
    other_base = _adapted(type(tiny_bert)(tiny_bert.config))
    with pytest.raises(tt.CheckpointMismatchError, match="other weights"):
        _run(other_base, tmp_path, resume=True)
    with pytest.raises(tt.CheckpointMismatchError, match="planned for 12 steps, this run for 6"):
        tt.train(_adapted(tiny_bert), _data(), epochs=1, lr=1e-2, scheduler=tt.linear_schedule(2), progress=False,
                 checkpoint=tt.CheckpointConfig(tmp_path), run_config={"lr": 1e-2, "seed": 2}, resume=True)


def test_resume_needs_a_checkpoint(tiny_bert, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        _run(_adapted(tiny_bert), tmp_path, resume=True)
    with pytest.raises(tt.ConfigError, match="resume needs checkpoint"):
        tt.train(_adapted(tiny_bert), _data(), max_steps=1, resume=True, progress=False)
    with pytest.raises(tt.ConfigError, match="every must be an integer >= 1, got 0"):
        tt.CheckpointConfig(tmp_path, every=0)


def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(tiny_bert, tmp_path, monkeypatch):
    import trimtune.core.io.atomic as atomic

    real_save = atomic.save_file
    calls = {"n": 0}

    def fill_disk_on_the_second_checkpoint(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 2:  # each checkpoint writes two safetensors files
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(atomic, "save_file", fill_disk_on_the_second_checkpoint)
    with pytest.raises(tt.CheckpointError, match=r"step 4 .*the disk is full; the previous checkpoint .*step-00000002 is intact"):
        _run(_adapted(tiny_bert), tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]  # no partial directory left behind
    read_checkpoint(tmp_path / "step-00000002")


class PoisonAt:
    def __init__(self, step):
        self.step = step

    def loss_term(self, ctx):
        return torch.tensor(float("nan")) if ctx.step + 1 == self.step else None


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_bert, tmp_path):
    model = _adapted(tiny_bert)
    with pytest.raises(tt.NonFiniteLossError, match="loss is nan at step 6") as raised:
        _run(model, tmp_path, callbacks=[PoisonAt(6)])
    assert "last good checkpoint is" in "\n".join(raised.value.__notes__)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    tensors, state = read_checkpoint(tmp_path / "step-00000004")
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values())


@pytest.mark.parametrize("autocast, grad_accum", [("fp16", 1), (None, 2)])
def test_resume_with_grad_scaler_and_accumulation(tmp_path, autocast, grad_accum):
    from torch import nn

    def run(directory, **kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Linear(16, 2))
        tt.apply(model, tt.LoraConfig(r=2, targets=["0", "2"], init="gaussian"))
        data = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(8)]
        tt.train(model, data, epochs=1, lr=1e-2, autocast=autocast, grad_accum=grad_accum, progress=False,
                 loss_fn=nn.functional.cross_entropy, checkpoint=tt.CheckpointConfig(directory, every=2), **kwargs)
        return _trainables(model)

    expected = run(tmp_path / "reference")
    _, state = read_checkpoint(tt.latest_checkpoint(tmp_path / "reference"))
    assert state["step"] == 8 // grad_accum and state["position"]["batches"] == 8
    if autocast == "fp16":
        assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    with pytest.raises(Interrupt):
        run(tmp_path / "run", callbacks=[InterruptAt(3)])
    got = run(tmp_path / "run", resume=True)
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)


def test_resumed_pruning_run_restores_masks_on_layers_not_yet_wrapped(tiny_bert, tmp_path):
    """A fresh model has no pruning wrappers when its checkpoint's masks are loaded: loading wraps the
    layer first, and the resumed run ends with the uninterrupted run's weights and masks."""
    def run(model, directory, **kwargs):
        config = tt.PruneConfig(importance=tt.Magnitude(), targets=["bert.encoder.layer.0.intermediate.dense"])
        schedule = tt.PruneSchedule(final=0.5, style="iterative", begin=1, end=7, rounds=3)
        return _run(model, directory, callbacks=[tt.PruningCallback(config, schedule), *kwargs.pop("callbacks", [])], **kwargs)

    reference = copy.deepcopy(tiny_bert)
    run(reference, tmp_path / "reference")
    with pytest.raises(Interrupt):
        run(copy.deepcopy(tiny_bert), tmp_path / "run", callbacks=[InterruptAt(6)])
    resumed = copy.deepcopy(tiny_bert)
    run(resumed, tmp_path / "run", resume=True)
    state, want = resumed.state_dict(), reference.state_dict()
    mask = "bert.encoder.layer.0.intermediate.dense.weight_mask"
    assert mask in state and 0.4 < 1 - state[mask].float().mean() <= 0.5
    assert state.keys() == want.keys()
    for name, value in state.items():
        torch.testing.assert_close(value, want[name], atol=1e-6, rtol=0, msg=name)
