"""trimtune callbacks (given ones and those the model carries) run inside transformers' Trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

import trimtune as tt
from trimtune.core.state import state_of
from trimtune.training.hf_trainer import TrimtuneCallback


def examples(n=8):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (n, 9), generator=gen)
    return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": torch.tensor(i % 3)} for i, row in enumerate(ids)]


def trainer(model, tmp_path, callbacks, max_steps=3):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
    )
    return Trainer(model=model, args=args, train_dataset=examples(), callbacks=[TrimtuneCallback(callbacks)])


class Recorder(tt.Callback):
    def __init__(self, tag, log, stop_at=None):
        self.tag, self.log, self.stop_at = tag, log, stop_at

    def on_train_start(self, ctx):
        self.log.append((self.tag, "start", ctx.total_steps))

    def after_optimizer_step(self, ctx):
        grads = [p.grad for p in ctx.model.parameters() if p.requires_grad]
        self.log.append((self.tag, "after_optimizer_step", ctx.step, all(g is not None for g in grads)))

    def on_step_end(self, ctx, step, loss):
        self.log.append((self.tag, "step_end", step))
        ctx.stop = step == self.stop_at

    def on_train_end(self, ctx, result):
        self.log.append((self.tag, "end"))


def test_given_and_model_callbacks_run_at_the_trainers_steps(tiny_bert, tmp_path):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, targets="query|value"))
    log = []
    state_of(tiny_bert).callbacks["method"] = Recorder("method", log)  # what AdaLoRA registers
    trainer(tiny_bert, tmp_path, [Recorder("mine", log)]).train()
    expected = [("start", 3)]
    for step in (1, 2, 3):
        expected += [("after_optimizer_step", step, True), ("step_end", step)]
    expected += [("end",)]
    assert log == [(tag, *event) for event in expected for tag in ("method", "mine")]


def test_a_hook_can_stop_the_trainer(tiny_bert, tmp_path):
    tt.apply(tiny_bert, tt.LoraConfig(r=4, targets="query|value"))
    run = trainer(tiny_bert, tmp_path, [Recorder("mine", [], stop_at=2)], max_steps=5)
    run.train()
    assert run.state.global_step == 2


def test_a_loss_term_is_refused_with_advice(tiny_bert, tmp_path):
    class Penalty(tt.Callback):
        def loss_term(self, ctx):
            return torch.tensor(1.0)

    tt.apply(tiny_bert, tt.LoraConfig(r=4, targets="query|value"))
    with pytest.raises(TypeError, match="Penalty adds a loss term.*compute_loss"):
        trainer(tiny_bert, tmp_path, [Penalty()]).train()


def test_adalora_reallocates_ranks_under_the_trainer(tiny_bert, tmp_path, recwarn):
    """peft's trap: under Trainer, forgetting update_and_allocate silently gives plain LoRA."""
    tt.apply(tiny_bert, tt.AdaLoraConfig(init_r=4, target_r=2, tinit=1, tfinal=1, targets="query|value"))
    trainer(tiny_bert, tmp_path, [], max_steps=6).train()
    ranks = tt.adalora_ranks(tiny_bert)
    assert len(ranks) == 4 and sum(ranks.values()) == 2 * len(ranks)
    assert not [w for w in recwarn if "rank update was never called" in str(w.message)]
