"""LoRA+ against peft's ``create_loraplus_optimizer``: the same parameter groups and learning rates on the
same model, the same losses step by step, and a recipe's ``optimizer`` section reaching it."""

from __future__ import annotations

import copy
import functools
import json
import re

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer

import trimtune as tt

from _peft_parity import copy_from_peft
from _training_helpers import adamw_losses

RATIO, LR = 16, 1e-3


def _ours_name(peft_name: str) -> str:
    """peft's parameter name as trimtune names the same tensor."""
    name = peft_name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".copies.default.")
    return re.sub(r"\.lora_(?:embedding_)?([AB])\.default(?:\.weight)?$", r".deltas.default.lora_\1", name)


def _ours_key(peft_name: str, adapter: str) -> str | None:
    """For copy_from_peft: LoRA factors, embedding ones included, and head copies."""
    return _ours_name(peft_name) if f"_A.{adapter}" in peft_name or f"_B.{adapter}" in peft_name or ".modules_to_save." in peft_name else None


def _bert_pair(tiny_bert):
    """LoRA on query/value and the word embeddings, a trained classifier copy (a matrix and a bias)."""
    targets, head = ["query", "value", "word_embeddings"], ["classifier"]
    theirs = peft.get_peft_model(copy.deepcopy(tiny_bert), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                                            modules_to_save=head))
    ours = tt.apply(copy.deepcopy(tiny_bert), tt.LoraConfig(r=4, alpha=8, targets=targets, modules_to_save=head))
    copy_from_peft(theirs, ours, key_map=_ours_key)
    return ours, theirs


def _groups(optimizer, model, rename=lambda n: n):
    names = {id(p): rename(n) for n, p in model.named_parameters()}
    return [(sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_same_groups_and_learning_rates_as_peft(tiny_bert):
    ours, theirs = _bert_pair(tiny_bert)
    kwargs = dict(loraplus_weight_decay=0.1, loraplus_lr_embedding=1e-5)
    expected = _groups(create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, **kwargs), theirs, _ours_name)
    got = _groups(tt.loraplus_optimizer(ours, LR, RATIO, embedding_lr=1e-5, weight_decay=0.1), ours)
    assert got == expected
    a, embedding, b, b_no_decay = got
    assert "classifier.copies.default.weight" in a[0] and b[1] == LR * RATIO and embedding[1] == 1e-5
    assert any(n.endswith("word_embeddings.deltas.default.lora_B") for n in embedding[0])
    assert b_no_decay[0] == ["classifier.copies.default.bias"] and b_no_decay[2] == 0.0 and b[2] == 0.1


def test_training_losses_match_peft(tiny_llama):
    targets = ["q_proj", "v_proj", "embed_tokens"]
    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.LoraConfig(r=4, alpha=8, targets=targets))
    copy_from_peft(theirs, ours, key_map=_ours_key)
    same_rate = copy.deepcopy(ours)  # the same start, one learning rate for A and B
    torch.manual_seed(5)
    batches = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (4, 2, 8))]
    runs = [(ours, tt.loraplus_optimizer(ours, LR, RATIO)),
            (theirs, create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO)),
            (same_rate, tt.loraplus_optimizer(same_rate, LR, 1))]
    losses = [adamw_losses(model, batches, optimizer=optimizer) for model, optimizer in runs]
    assert losses[0][-1] != losses[0][0]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=0)
    assert abs(losses[2][-1] - losses[0][-1]) > 1e-3  # B's faster rate shows


def test_train_takes_it_as_a_factory_with_the_callbacks_parameters(tiny_llama):
    tt.apply(tiny_llama, tt.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    seen = {}

    class OwnsAMap:  # like distillation's width maps: a callback's own parameters train too
        map = torch.nn.Parameter(torch.zeros(3))

        def trainable_parameters(self):
            return [self.map]

        def on_step_end(self, ctx, step, loss):
            seen["optimizer"] = ctx.optimizer

    batch = {"input_ids": torch.randint(3, 100, (2, 8))}
    batch["labels"] = batch["input_ids"]
    factory = functools.partial(tt.loraplus_optimizer, ratio=RATIO)
    tt.train(tiny_llama, [batch], max_steps=1, lr=2e-3, optimizer=factory, callbacks=[OwnsAMap()], progress=False)
    groups = seen["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [2e-3, 1e-6, 2e-3 * RATIO, 2e-3 * RATIO, 2e-3]
    assert groups[-1]["params"] == [OwnsAMap.map] and len(groups[2]["params"]) == 4  # B of q and v in 2 blocks


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 0}, "ratio must be a positive number, got 0"),
    ({"ratio": 16, "weight_decay": -1}, "weight_decay must be a number >= 0, got -1"),
])
def test_bad_values_are_named(tiny_llama, kwargs, message):
    tt.apply(tiny_llama, tt.LoraConfig(r=4))
    with pytest.raises(tt.ConfigError, match=message):
        tt.loraplus_optimizer(tiny_llama, LR, **kwargs)


def test_a_model_without_lora_is_refused(tiny_llama):
    tt.apply(tiny_llama, tt.IA3Config())
    with pytest.raises(ValueError, match="LoRA\\+ found no LoRA factor among the trainable parameters"):
        tt.loraplus_optimizer(tiny_llama, LR, RATIO)


def test_recipe_optimizer_section():
    from trimtune.recipes import RecipeError
    from trimtune.recipes.load import validate

    base = {"model": {"path": "minilm"}, "data": {"train": "demo"}, "train": {"lr": 2e-4}}
    recipe = validate({**base, "method": {"type": "dora"}, "optimizer": {"loraplus_ratio": 8}})
    factory = recipe.optimizer.factory()
    assert isinstance(factory, functools.partial) and factory.keywords == {"ratio": 8, "embedding_lr": 1e-6, "weight_decay": 0.0}
    with pytest.raises(RecipeError, match="optimizer.loraplus_ratio sets the learning rate of LoRA's B factors, but method.type is 'ia3'"):
        validate({**base, "method": {"type": "ia3"}, "optimizer": {"loraplus_ratio": 8}})
    with pytest.raises(RecipeError, match="optimizer.loraplus_ratio"):
        validate({**base, "method": {"type": "lora"}, "optimizer": {"loraplus_ratio": -2}})
    with pytest.raises(RecipeError, match="unknown key optimizer.ratio"):
        validate({**base, "method": {"type": "lora"}, "optimizer": {"ratio": 8}})


def test_a_recipe_run_trains_with_loraplus(tmp_path, capsys):
    from pathlib import Path

    from trimtune import cli

    example = Path(__file__).resolve().parents[1] / "examples" / "loraplus_minilm.yaml"
    quick = ["--set", "data.limit=16", "--set", "train.epochs=1", "--set", "data.max_length=16",
             "--set", "data.batch_size=4", "--quiet"]
    losses = {}
    for ratio in (16, 1):
        run = tmp_path / f"ratio{ratio}"
        code = cli.main(["tune", str(example), "--out", str(run), *quick, "--set", f"optimizer.loraplus_ratio={ratio}"])
        assert code == 0, capsys.readouterr().err
        losses[ratio] = json.loads((run / "metrics.json").read_text())["losses"]
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert losses[16][0] == losses[1][0] and losses[16][-1] != losses[1][-1]  # same start; B's rate changes the rest
