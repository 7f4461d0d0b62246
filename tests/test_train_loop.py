"""The training loop: it learns, trains only what is trainable, accumulates exactly, stops on NaN,
calls hooks in order, evaluates at the right steps, and refuses bad arguments clearly."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trimtune as tt


def regression_data(n_batches=4, batch=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    true_w = torch.randn(4, 1, generator=gen)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(batch, 4, generator=gen)
        batches.append((x, x @ true_w))
    return batches


def classification_data(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def quiet_train(model, data, **kwargs):
    kwargs.setdefault("progress", False)
    return tt.train(model, data, **kwargs)


def test_the_loop_decreases_the_loss_on_a_tiny_problem():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    result = quiet_train(model, regression_data(), epochs=15, lr=0.05, loss_fn=F.mse_loss)
    assert result.steps == 60 and len(result.losses) == 60
    assert result.losses[-1] < 0.05 * result.losses[0]
    assert result.wall_time > 0


def bert_batch(seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (4, 9), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}


def test_lora_on_tiny_bert_trains_only_the_adapter(tiny_bert):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, alpha=8, targets="query|value"))
    base = {k: v.clone() for k, v in tiny_bert.state_dict().items() if "lora_" not in k}
    lora = {k: v.clone() for k, v in tiny_bert.named_parameters() if "lora_" in k}
    data = [bert_batch(0), bert_batch(1)]
    loss_before = tt.evaluate(tiny_bert, data)["loss"]
    result = quiet_train(tiny_bert, data, epochs=10, lr=1e-2, eval_data=data, metric=tt.accuracy)
    after = tiny_bert.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # bit-identical base and head
    changed = [k for k, v in tiny_bert.named_parameters() if "lora_" in k and not torch.equal(v, lora[k])]
    assert sorted(changed) == sorted(lora)
    assert set(result.final_metrics) == {"loss", "accuracy"}
    assert result.final_metrics["loss"] < loss_before
    assert not tiny_bert.training  # the fixture was in eval mode; train restores it


class NanAt:
    """An MSE loss that turns NaN (or inf) at its n-th call."""

    def __init__(self, n, value=float("nan")):
        self.calls, self.n, self.value = 0, n, value

    def __call__(self, logits, targets):
        self.calls += 1
        loss = F.mse_loss(logits, targets)
        return loss * self.value if self.calls == self.n else loss


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_the_step_and_last_finite_loss(bad):
    model = nn.Linear(4, 1)
    with pytest.raises(tt.NonFiniteLossError) as error:
        quiet_train(model, regression_data(), max_steps=10, loss_fn=NanAt(3, bad))
    err = error.value
    assert err.step == 3 and err.result.steps == 2
    assert err.last_finite == err.result.losses[-1]
    message = str(err)
    assert "at step 3" in message and f"{err.last_finite:.6g} at step 2" in message
    assert str(bad) in message


def test_non_finite_loss_at_the_first_step_says_no_step_finished():
    with pytest.raises(tt.NonFiniteLossError, match="at step 1; no step had finished"):
        quiet_train(nn.Linear(4, 1), regression_data(), max_steps=2, loss_fn=NanAt(1))


def test_grad_accum_of_two_half_batches_equals_one_full_batch():
    torch.manual_seed(0)
    x, y = classification_data(8)
    full = nn.Linear(4, 3)
    initial, halves = copy.deepcopy(full), copy.deepcopy(full)
    for model, data, accum in ((full, [(x, y)], 1), (halves, [(x[:4], y[:4]), (x[4:], y[4:])], 2)):
        sgd = torch.optim.SGD(model.parameters(), lr=0.5)
        quiet_train(model, data, epochs=3, optimizer=sgd, loss_fn=F.cross_entropy, grad_accum=accum)
    for a, b in zip(full.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(full.weight, initial.weight, atol=1e-3)  # and training did move them


def causal_lm_batches(targets_per_row: list[int], length: int = 12) -> list[dict]:
    """One-row batches of random tokens whose last ``n`` positions carry loss (completions of unequal length)."""
    torch.manual_seed(1)
    batches = []
    for n in targets_per_row:
        ids = torch.randint(3, 100, (1, length))
        labels = torch.full_like(ids, -100)
        labels[:, length - n:] = ids[:, length - n:]
        batches.append({"input_ids": ids, "labels": labels})
    return batches


def test_a_causal_lm_step_weighs_every_target_token_alike_across_micro_batches(tiny_llama):
    small, large = causal_lm_batches([2, 9])  # 2 and 9 target tokens
    full = {k: torch.cat([small[k], large[k]]) for k in small}
    models = {}
    for name, data, accum in (("full", [full], 1), ("halves", [small, large], 2)):
        models[name] = copy.deepcopy(tiny_llama).train()
        sgd = torch.optim.SGD(models[name].parameters(), lr=0.5)
        result = quiet_train(models[name], data, epochs=1, optimizer=sgd, grad_accum=accum)
        models[name].losses = result.losses
    # the two micro-batches' mean losses averaged alike would weigh the one target token as much as the eight
    assert models["halves"].losses == pytest.approx(models["full"].losses, rel=1e-5)
    for a, b in zip(models["full"].parameters(), models["halves"].parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    moved = models["full"].model.layers[0].mlp.up_proj.weight
    assert not torch.allclose(moved, tiny_llama.model.layers[0].mlp.up_proj.weight, atol=1e-4)
    with torch.no_grad():
        tokens = tt.evaluate(tiny_llama, [small, large])
        whole = float(tiny_llama(**full).loss)
    assert tokens["loss"] == pytest.approx(whole, rel=1e-5) and tokens["target_tokens"] == 11
    assert tokens["perplexity"] == pytest.approx(math.exp(whole), rel=1e-5)


def test_a_shorter_last_group_makes_a_step_and_max_steps_wins_over_epochs():
    data = regression_data(n_batches=5)
    result = quiet_train(nn.Linear(4, 1), data, epochs=2, grad_accum=2, loss_fn=F.mse_loss)
    assert result.steps == 6  # ceil(5 / 2) per epoch
    result = quiet_train(nn.Linear(4, 1), data, epochs=3, max_steps=4, loss_fn=F.mse_loss)
    assert result.steps == 4


class Recorder:
    def __init__(self, tag, log):
        self.tag, self.log = tag, log

    def on_train_start(self, ctx):
        self.log.append((self.tag, "start", ctx.step, ctx.total_steps))

    def loss_term(self, ctx):
        self.log.append((self.tag, "loss_term", ctx.step))

    def after_optimizer_step(self, ctx):
        has_grads = ctx.model.weight.grad is not None  # still there for AdaLoRA/masks
        self.log.append((self.tag, "after_optimizer_step", ctx.step, has_grads))

    def on_step_end(self, ctx, step, loss):
        assert ctx.model.weight.grad is None  # zeroed by now
        self.log.append((self.tag, "step_end", step))

    def on_eval(self, ctx, step, metrics):
        self.log.append((self.tag, "eval", step, sorted(metrics)))

    def on_train_end(self, ctx, result):
        self.log.append((self.tag, "end", result.steps))


def test_callbacks_are_called_in_order():
    log = []
    data = regression_data(n_batches=2)
    quiet_train(nn.Linear(4, 1), data, max_steps=2, loss_fn=F.mse_loss, eval_data=data, eval_every=1,
                callbacks=[Recorder("a", log), Recorder("b", log)])
    expected = [("start", 0, 2)]
    for step in (1, 2):
        expected += [("loss_term", step - 1), ("after_optimizer_step", step, True), ("step_end", step), ("eval", step, ["loss"])]
    expected += [("end", 2)]
    assert log == [(tag, *event) for event in expected for tag in ("a", "b")]


def test_a_callback_can_stop_training_and_add_a_loss_term():
    class StopAfterTwo(tt.Callback):
        def loss_term(self, ctx):
            return torch.tensor(1.0)

        def on_step_end(self, ctx, step, loss):
            ctx.stop = step == 2

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    plain = quiet_train(copy.deepcopy(model), regression_data(), max_steps=1, loss_fn=F.mse_loss)
    result = quiet_train(model, regression_data(), max_steps=10, loss_fn=F.mse_loss, callbacks=[StopAfterTwo()])
    assert result.steps == 2
    assert result.losses[0] == pytest.approx(plain.losses[0] + 1.0)


def test_an_object_with_no_hook_is_refused():
    with pytest.raises(TypeError, match="implements none of the training hooks"):
        quiet_train(nn.Linear(4, 1), regression_data(), max_steps=1, loss_fn=F.mse_loss, callbacks=[object()])


@pytest.mark.parametrize("eval_every, steps", [(3, [3, 6, 7]), (7, [7]), (None, [7]), (2, [2, 4, 6, 7])])
def test_eval_runs_at_the_right_steps(eval_every, steps):
    x, y = classification_data(8)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    result = quiet_train(nn.Linear(4, 3), data, max_steps=7, loss_fn=F.cross_entropy,
                         eval_data=data, eval_every=eval_every, metric=tt.accuracy)
    assert [step for step, _ in result.eval_history] == steps
    assert all(set(m) == {"loss", "accuracy"} for _, m in result.eval_history)


def test_evaluate_weights_batches_by_their_size():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    data = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]  # 2/3 right, then 1/1
    model = nn.Identity()
    model.register_parameter("p", nn.Parameter(torch.zeros(1)))  # gives the model a device
    model.train()
    metrics = tt.evaluate(model, data, {"acc": tt.accuracy}, loss_fn=F.cross_entropy)
    assert metrics["acc"] == pytest.approx(3 / 4)
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert model.training


def test_evaluate_on_hf_dict_batches(tiny_bert):
    batch = bert_batch(0)
    metrics = tt.evaluate(tiny_bert, [batch], tt.accuracy)
    with torch.no_grad():
        out = tiny_bert(**batch)
    assert metrics["loss"] == pytest.approx(out.loss.item())
    assert metrics["accuracy"] == pytest.approx(float((out.logits.argmax(-1) == batch["labels"]).float().mean()))


def test_a_loss_fn_on_hf_dict_batches_takes_the_labels_out(tiny_bert):
    batch = bert_batch(0)
    with torch.no_grad():
        own_loss = tiny_bert(**batch).loss.item()
    assert tt.evaluate(tiny_bert, [batch], loss_fn=F.cross_entropy)["loss"] == pytest.approx(own_loss)


def test_accuracy_leaves_out_ignored_labels():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # one sequence, three tokens
    labels = torch.tensor([[0, 0, -100]])  # right, wrong, padding
    assert tt.accuracy(logits, labels).tolist() == [1.0, 0.0]


def test_batches_move_to_the_device_through_nested_containers():
    from trimtune.training.batches import to_device

    t = torch.zeros(2)
    moved = to_device({"a": (t, [t]), "b": 3}, torch.device("meta"))
    assert isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list) and moved["b"] == 3
    assert moved["a"][0].is_meta and moved["a"][1][0].is_meta


def test_linear_schedule_warms_up_then_decays():
    lrs = []

    class LrLog(tt.Callback):
        def after_optimizer_step(self, ctx):  # before the scheduler steps: the lr this step used
            lrs.append(ctx.optimizer.param_groups[0]["lr"])

    quiet_train(nn.Linear(4, 1), regression_data(), max_steps=6, lr=0.1, loss_fn=F.mse_loss,
                scheduler=tt.linear_schedule(warmup_steps=2), callbacks=[LrLog()])
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025])


def test_linear_schedule_refuses_warmup_longer_than_training():
    with pytest.raises(ValueError, match=r"warmup_steps \(10\) must be smaller than the number of steps \(6\)"):
        quiet_train(nn.Linear(4, 1), regression_data(), max_steps=6, loss_fn=F.mse_loss, scheduler=tt.linear_schedule(10))
    with pytest.raises(tt.ConfigError, match="warmup_steps"):
        tt.linear_schedule(-1)


def test_a_ready_scheduler_object_is_used_as_is():
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    quiet_train(model, regression_data(), max_steps=3, optimizer=optimizer, scheduler=scheduler, loss_fn=F.mse_loss)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize("autocast, dtype", [("bf16", torch.bfloat16), (torch.float16, torch.float16)])
def test_autocast_runs_the_forward_in_low_precision_on_cpu(autocast, dtype):
    seen = []

    def loss_fn(logits, targets):
        seen.append(logits.dtype)
        return F.mse_loss(logits.float(), targets)

    model = nn.Linear(4, 1)
    before = model.weight.detach().clone()
    result = quiet_train(model, regression_data(1), max_steps=5, lr=0.05, loss_fn=loss_fn, autocast=autocast)
    assert seen == [dtype] * 5
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("init_scale, stepped", [(3e38, False), (1.0, True)])
def test_an_overflowing_fp16_step_is_reported_as_skipped(init_scale, stepped):
    from trimtune.training.precision import MixedPrecision

    model = nn.Linear(4, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = MixedPrecision("fp16", torch.device("cpu"))
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    x, y = regression_data(1)[0]
    with precision.autocast():
        loss = F.mse_loss(model(x).float(), y) + 10.0
    precision.backward(loss)
    assert precision.step(optimizer) is stepped
    assert torch.equal(model.weight, before) is not stepped


def test_clipping_records_the_norm_before_clipping():
    model = nn.Linear(4, 1)
    result = quiet_train(model, regression_data(), max_steps=3, loss_fn=F.mse_loss, clip=tt.ClipConfig("norm", 1e-3))
    assert len(result.grad_norms) == 3 and all(n > 1e-3 for n in result.grad_norms)


def test_progress_bar_is_shown_unless_quiet(capfd):
    quiet_train(nn.Linear(4, 1), regression_data(), max_steps=2, loss_fn=F.mse_loss)
    assert capfd.readouterr().err == ""
    tt.train(nn.Linear(4, 1), regression_data(), max_steps=2, loss_fn=F.mse_loss, progress=True)
    assert "train" in capfd.readouterr().err


def test_gradients_are_synchronised_once_per_step_under_ddp():
    class FakeDDP(nn.Linear):
        skipped = 0

        @contextlib.contextmanager
        def no_sync(self):
            FakeDDP.skipped += 1
            yield

    quiet_train(FakeDDP(4, 1), regression_data(n_batches=6), max_steps=2, grad_accum=3, loss_fn=F.mse_loss)
    assert FakeDDP.skipped == 4  # 2 of the 3 micro-batches of each of 2 steps


def test_submodules_import_despite_the_train_function_name():
    from trimtune.training.clip import ClipConfig
    from trimtune.training.loop import train

    assert train is tt.train and ClipConfig is tt.ClipConfig


def frozen_linear():
    model = nn.Linear(4, 1)
    model.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(), tt.ConfigError, "epochs or max_steps"),
        (dict(max_steps=0), tt.ConfigError, "max_steps must be an integer >= 1, got 0"),
        (dict(epochs=1.5), tt.ConfigError, "epochs must be an integer >= 1, got 1.5"),
        (dict(max_steps=1, grad_accum=0), tt.ConfigError, "grad_accum must be an integer >= 1, got 0"),
        (dict(max_steps=1, eval_every=2), tt.ConfigError, "eval_every needs eval_data"),
        (dict(max_steps=1, lr=-1.0), tt.ConfigError, "lr must be a positive number, got -1.0"),
        (dict(max_steps=1, lr=0.1, optimizer="sgd"), tt.ConfigError, "either lr or an optimizer"),
        (dict(max_steps=1, clip="1"), TypeError, "ClipConfig or a number"),
        (dict(max_steps=1, autocast="int8"), tt.ConfigError, "autocast must be None, 'bf16' or 'fp16'"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, words):
    kwargs.setdefault("loss_fn", F.mse_loss)
    with pytest.raises(error, match=words):
        quiet_train(nn.Linear(4, 1), regression_data(), **kwargs)


@pytest.mark.parametrize(
    "model, data, kwargs, error, words",
    [
        (frozen_linear, regression_data(), dict(loss_fn=F.mse_loss), ValueError, "no trainable parameters"),
        (lambda: nn.Linear(4, 1), regression_data(), {}, ValueError, "need loss_fn"),
        (lambda: nn.Linear(4, 1), [(1, 2, 3)], {}, TypeError, "an \\(inputs, targets\\) pair, got a tuple of length 3"),
        (lambda: nn.Linear(4, 1), [], dict(loss_fn=F.mse_loss), ValueError, "no batches in epoch 1"),
        (lambda: nn.Linear(4, 1), iter(regression_data(1)), dict(loss_fn=F.mse_loss), ValueError, "no batches in epoch 2"),
    ],
)
def test_bad_models_and_batches_are_clear_errors(model, data, kwargs, error, words):
    with pytest.raises(error, match=words):
        quiet_train(model(), data, max_steps=3, **kwargs)


def test_a_dict_batch_without_labels_or_loss_fn_gives_no_loss(tiny_bert):
    batch = {k: v for k, v in bert_batch(0).items() if k != "labels"}
    with pytest.raises(ValueError, match="dict batches need 'labels'"):
        quiet_train(tiny_bert, [batch], max_steps=1)


def test_a_loss_fn_with_dict_batches_needs_labels():
    with pytest.raises(ValueError, match="no 'labels'"):
        quiet_train(nn.Linear(4, 1), [{"input": torch.zeros(2, 4)}], max_steps=1, loss_fn=F.mse_loss)
