"""AdaLoRA: peft parity of forward, loss (orthogonality penalty), sensitivity/budget/masks over a run; hooks, errors."""

import copy

import pytest
import torch
from _peft_parity import assert_parity, copy_from_peft, logits, peft_model
from peft import AdaLoraConfig as PeftAdaLoraConfig

import trimtune as tt


def _configs(**kw):
    shared = dict(init_r=6, target_r=3, tinit=2, tfinal=2, deltaT=1, total_step=10, beta1=0.85, beta2=0.85, orth_reg_weight=0.5)
    shared.update(kw)
    peft = PeftAdaLoraConfig(lora_alpha=8, **shared)
    return peft, tt.AdaLoraConfig(alpha=8, **shared)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2", "minilm"])
def test_forward_matches_peft(fixture, request, token_ids):
    if fixture == "minilm":
        from transformers import BertModel

        model = BertModel.from_pretrained(request.getfixturevalue("minilm_path")).eval()
        out = lambda m: m(input_ids=token_ids).last_hidden_state  # noqa: E731
    else:
        model = request.getfixturevalue(fixture)
        out = lambda m: logits(m, token_ids)  # noqa: E731
    peft_cfg, ours_cfg = _configs()
    peft = peft_model(model, peft_cfg).eval()
    ours = tt.apply(copy.deepcopy(model), ours_cfg)
    copy_from_peft(peft, ours)
    with torch.no_grad():
        assert_parity(out(ours), out(peft), out(model))
    assert tt.trainable_parameters(ours)[0] == peft.get_nb_trainable_parameters()[0]


def test_training_run_matches_peft_ranks_and_weights(tiny_llama):
    """Ten SGD steps through the whole schedule (warm-up, cubic fall, final freeze): same losses
    (orthogonality penalty included), same masks, same λ as peft's RankAllocator."""
    peft_cfg, ours_cfg = _configs()
    peft = peft_model(tiny_llama, peft_cfg).train()
    ours = tt.apply(copy.deepcopy(tiny_llama), ours_cfg).train()
    copy_from_peft(peft, ours)
    opt_peft = torch.optim.SGD([p for p in peft.parameters() if p.requires_grad], lr=0.05)
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.05)
    torch.manual_seed(3)
    batches = [torch.randint(3, 100, (2, 8)) for _ in range(10)]
    budgets = []
    for step, ids in enumerate(batches, start=1):
        # peft's AdaLoraModel.forward adds the penalty (PeftModelForCausalLM.forward bypasses it here)
        for model, opt in ((peft.base_model, opt_peft), (ours, opt_ours)):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            if model is peft.base_model:
                peft.base_model.update_and_allocate(step)
                peft_loss = loss.item()
            else:
                tt.adalora_update(ours, step)
                assert loss.item() == pytest.approx(peft_loss, abs=1e-5)
            opt.zero_grad()
        budgets.append(ours._trimtune.callbacks["default"].budget(step)[0])
        for name, layer in ((n, m) for n, m in ours.named_modules() if hasattr(m, "deltas") and "default" in m.deltas):
            peft_layer = peft.base_model.model.get_submodule(name)
            torch.testing.assert_close(layer.deltas["default"].lora_E, peft_layer.lora_E["default"], atol=1e-5, rtol=1e-4)
    assert budgets[0] == 24 and budgets[-1] == 12  # 4 layers x init_r 6 -> 4 x target_r 3
    ranks = tt.adalora_ranks(ours)
    assert sum(ranks.values()) == 12
    peft_pattern = peft.peft_config["default"].rank_pattern
    ours_pattern = ours_cfg.rank_pattern
    assert {k.removesuffix(".lora_E.default"): v for k, v in peft_pattern.items()} == ours_pattern
    assert ranks == {k: sum(v) for k, v in ours_pattern.items()}
    for name, r in ranks.items():
        e = ours.get_submodule(name).deltas["default"].lora_E
        assert int((e != 0).sum()) == r  # masked λ stay exactly zero after the final allocation


def test_orthogonality_penalty_value(tiny_llama, token_ids):
    _, config = _configs(orth_reg_weight=2.0)
    tt.apply(tiny_llama, config)
    deltas = [m.deltas["default"] for m in tiny_llama.modules() if hasattr(m, "deltas") and "default" in m.deltas]
    by_hand = []
    for d in deltas:
        by_hand.append(torch.linalg.norm(d.lora_A @ d.lora_A.T - torch.eye(6)))
        by_hand.append(torch.linalg.norm(d.lora_B.T @ d.lora_B - torch.eye(6)))
    tiny_llama.eval()
    with torch.no_grad():
        plain = tiny_llama(input_ids=token_ids, labels=token_ids).loss
        tiny_llama.train()
        with_penalty = tiny_llama(input_ids=token_ids, labels=token_ids).loss
    assert with_penalty.item() == pytest.approx(plain.item() + 2.0 * torch.stack(by_hand).mean().item(), rel=1e-5)


def test_warns_when_rank_update_never_called(tiny_llama, token_ids):
    tt.apply(tiny_llama, _configs()[1]).train()
    with pytest.warns(UserWarning, match="rank update was never called.*adalora_update"):
        for _ in range(10):
            tiny_llama(input_ids=token_ids, labels=token_ids)

    tt.delete_adapter(tiny_llama, "default")  # no AdaLoRA left: the hook is a no-op, no penalty
    with torch.no_grad():
        train_loss = tiny_llama(input_ids=token_ids, labels=token_ids).loss
        assert train_loss.item() == tiny_llama.eval()(input_ids=token_ids, labels=token_ids).loss.item()


def test_update_without_gradients_and_without_total_step(tiny_llama):
    tt.apply(tiny_llama, _configs()[1])
    with pytest.raises(RuntimeError, match="after loss.backward"):
        tt.adalora_update(tiny_llama, 1)
    model = tt.apply(copy.deepcopy(tiny_llama), tt.AdaLoraConfig(targets=["o_proj"]), "open")
    with pytest.raises(tt.ConfigError, match="total_step"):
        tt.adalora_update(model, 1, name="open")


def test_merge_and_rank_pattern_resizes(tiny_gpt2, token_ids):
    _, config = _configs()
    tt.apply(tiny_gpt2, config)
    for layer in (m for m in tiny_gpt2.modules() if hasattr(m, "deltas")):
        with torch.no_grad():
            layer.deltas["default"].lora_E.normal_()
    adapted = logits(tiny_gpt2, token_ids)
    tt.merge(tiny_gpt2)
    torch.testing.assert_close(logits(tiny_gpt2, token_ids), adapted, atol=1e-5, rtol=1e-5)
    tt.unmerge(tiny_gpt2)
    pattern = {"transformer.h.0.attn.c_attn": [True, False, True, False, False, False]}
    resized = tt.apply(copy.deepcopy(tiny_gpt2), tt.AdaLoraConfig(init_r=6, target_r=3, rank_pattern=pattern, total_step=5), "p")
    delta = resized.transformer.h[0].attn.c_attn.deltas["p"]
    assert delta.lora_A.shape == (2, 32) and delta.lora_B.shape == (96, 2) and delta.ranknum == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(init_r=4, target_r=8), "target_r .* must be <= init_r"),
        (dict(tinit=8, tfinal=5, total_step=10), "tinit .* must be < total_step - tfinal"),
        (dict(total_step=0), "total_step must be an integer >= 1"),
        (dict(beta1=1.0), "beta1"),
        (dict(orth_reg_weight=-1), "orth_reg_weight"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(tt.ConfigError, match=message):
        tt.AdaLoraConfig(**kwargs)


def test_unsupported_layer_and_no_adalora():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(ValueError, match="AdaLoRA supports Linear"):
        tt.apply(model, tt.AdaLoraConfig(targets=["0"], total_step=5))
    with pytest.raises(ValueError, match="no AdaLoRA adapter"):
        tt.adalora_ranks(torch.nn.Linear(2, 2))


def test_trimtune_train_runs_the_rank_update_by_itself(tiny_llama, recwarn):
    from trimtune.training import train

    config = tt.AdaLoraConfig(init_r=4, target_r=2, tinit=1, tfinal=2)  # total_step taken from the loop
    tt.apply(tiny_llama, config)
    torch.manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (12, 2, 8))]
    train(tiny_llama, data, max_steps=12, lr=1e-2, progress=False)
    ranks = tt.adalora_ranks(tiny_llama)
    assert sum(ranks.values()) == 2 * len(ranks) and len(ranks) == 4
    assert config.rank_pattern is not None and set(config.rank_pattern) == set(ranks)
    assert not [w for w in recwarn if "rank update was never called" in str(w.message)]
