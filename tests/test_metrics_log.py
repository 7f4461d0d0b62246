"""MetricsLogger: log lines, a CSV of per-step and eval metrics, TensorBoard when installed."""

import csv
import logging
import sys
import types

import pytest
import torch
from torch import nn

import trimtune as tt


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    tt.apply(model, tt.LoraConfig(r=2, targets=["0", "2"], init="gaussian"))
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(6)]
    return model, data


def _train(model, data, logger, **kwargs):
    return tt.train(model, data, max_steps=6, lr=1e-2, progress=False, loss_fn=nn.functional.cross_entropy,
                    scheduler=tt.linear_schedule(2), eval_data=data[:2], eval_every=3, callbacks=[logger], **kwargs)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_and_log_lines(tmp_path, caplog):
    model, data = _setup()
    with caplog.at_level(logging.INFO, logger="trimtune.train"):
        result = _train(model, data, tt.MetricsLogger(tmp_path / "metrics.csv"), clip=0.5)
    rows = _rows(tmp_path / "metrics.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [float(r["value"]) for r in train_rows if r["name"] == "loss"] == pytest.approx(result.losses)
    assert [float(r["value"]) for r in train_rows if r["name"] == "grad_norm"] == pytest.approx(result.grad_norms)
    lrs = [float(r["value"]) for r in train_rows if r["name"] == "lr"]
    assert lrs[:4] == pytest.approx([5e-3, 1e-2, 1e-2, 1e-2 * 3 / 4])  # the LR each step used (warm-up, then decay)
    evals = {(int(r["step"]), r["name"]): float(r["value"]) for r in rows if r["split"] == "eval"}
    assert evals[(3, "loss")] == pytest.approx(result.eval_history[0][1]["loss"]) and (6, "loss") in evals
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("step 6/6 epoch 1: loss ") and "lr " in m and "grad_norm " in m for m in messages)
    assert any(m.startswith("eval at step 3: loss ") for m in messages)


def test_grad_norm_without_clipping_is_the_gradients_norm(tmp_path):
    model, data = _setup()
    seen = []

    class Probe:
        def after_optimizer_step(self, ctx):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    tt.train(model, data, max_steps=3, progress=False, loss_fn=nn.functional.cross_entropy,
             callbacks=[Probe(), tt.MetricsLogger(tmp_path / "m.csv")])
    logged = [float(r["value"]) for r in _rows(tmp_path / "m.csv") if r["name"] == "grad_norm"]
    assert logged == pytest.approx(seen) and all(v > 0 for v in logged)


def test_resumed_run_continues_the_csv(tmp_path):
    class StopAt:
        def on_step_end(self, ctx, step, loss):
            if step == 5:
                raise KeyboardInterrupt

    model, data = _setup()
    with pytest.raises(KeyboardInterrupt):
        tt.train(model, data, max_steps=6, progress=False, loss_fn=nn.functional.cross_entropy,
                 checkpoint=tt.CheckpointConfig(tmp_path / "ck", every=2), callbacks=[tt.MetricsLogger(tmp_path / "m.csv"), StopAt()])
    assert max(int(r["step"]) for r in _rows(tmp_path / "m.csv")) == 5
    model, data = _setup()
    tt.train(model, data, max_steps=6, progress=False, loss_fn=nn.functional.cross_entropy,
             checkpoint=tt.CheckpointConfig(tmp_path / "ck", every=2), callbacks=[tt.MetricsLogger(tmp_path / "m.csv")], resume=True)
    steps = [int(r["step"]) for r in _rows(tmp_path / "m.csv") if r["name"] == "loss"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_tensorboard_scalars(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, directory, purge_step=None):
            written.append(("open", directory, purge_step))

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    model, data = _setup()
    _train(model, data, tt.MetricsLogger(tensorboard_dir=tmp_path / "tb"))
    assert written[0] == ("open", str(tmp_path / "tb"), None) and written[-1] == ("close",)
    assert ("train/loss", 6) in written and ("train/lr", 1) in written and ("eval/loss", 3) in written


def test_tensorboard_missing_and_bad_input(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    model, data = _setup()
    with pytest.raises(tt.ConfigError, match="needs the tensorboard package"):
        _train(model, data, tt.MetricsLogger(tensorboard_dir=tmp_path / "tb"))
    with pytest.raises(tt.ConfigError, match="every must be an integer >= 1"):
        tt.MetricsLogger(every=0)
