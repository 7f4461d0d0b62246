"""IA3 and AdaLoRA adapter files: trimtune writes -> peft reads, peft writes -> trimtune reads (atol 1e-5)."""

import copy
import json

import peft
import pytest
import torch
from _peft_parity import assert_parity
from safetensors.torch import load_file

import trimtune as tt


def _model(fixture, request):
    if fixture == "minilm":
        from transformers import BertModel

        return BertModel.from_pretrained(request.getfixturevalue("minilm_path")).eval()
    return request.getfixturevalue(fixture)


def _out(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids)[0]  # logits, or BERT's last hidden state


def _randomise(model):
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))


def _adalora_configs(**kw):
    shared = dict(init_r=4, target_r=2, tinit=1, tfinal=1, total_step=6, **kw)
    return peft.AdaLoraConfig(lora_alpha=8, **shared), tt.AdaLoraConfig(alpha=8, **shared)


METHODS = {
    "ia3": (lambda: peft.IA3Config(), lambda: tt.IA3Config()),
    "adalora": (lambda: _adalora_configs()[0], lambda: _adalora_configs()[1]),
}


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_trimtune_writes_peft_reads(method, fixture, request, token_ids, tmp_path):
    model = _model(fixture, request)
    base = copy.deepcopy(model)
    tt.apply(model, METHODS[method][1]())
    _randomise(model)
    tt.save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == method.upper()
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert_parity(_out(loaded, token_ids), _out(model, token_ids), _out(base, token_ids))


@pytest.mark.parametrize("fixture", ["minilm", "tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_peft_writes_trimtune_reads(method, fixture, request, token_ids, tmp_path):
    model = _model(fixture, request)
    written = peft.get_peft_model(copy.deepcopy(model), METHODS[method][0]())
    _randomise(written)
    written.save_pretrained(tmp_path)
    ours = copy.deepcopy(model)
    config = tt.load_adapter(ours, tmp_path)
    assert isinstance(config, type(METHODS[method][1]()))
    assert_parity(_out(ours, token_ids), _out(written, token_ids), _out(model, token_ids))


def _train_batches(n):
    torch.manual_seed(5)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (n, 2, 8))]


def test_trained_adalora_file_keeps_only_the_allocated_ranks(tiny_llama, token_ids, tmp_path):
    base = copy.deepcopy(tiny_llama)
    _, config = _adalora_configs()
    tt.apply(tiny_llama, config)
    _randomise(tiny_llama)
    tt.train(tiny_llama, _train_batches(6), max_steps=6, lr=1e-2, progress=False)
    ranks = tt.adalora_ranks(tiny_llama)
    assert sum(ranks.values()) == 2 * len(ranks)
    tt.save_adapter(tiny_llama, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    for layer, rank in ranks.items():
        assert tensors[f"base_model.model.{layer}.lora_E"].shape == (rank, 1)
        assert tensors[f"base_model.model.{layer}.lora_B"].shape[1] == rank
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert_parity(_out(loaded, token_ids), _out(tiny_llama, token_ids), _out(base, token_ids))
    again = tt.load_adapter(copy.deepcopy(base), tmp_path)  # and back into trimtune, resized by rank_pattern
    assert again.rank_pattern == config.rank_pattern


def test_adalora_trained_by_peft_loads_with_its_rank_pattern(tiny_llama, token_ids, tmp_path):
    peft_config, _ = _adalora_configs()
    written = peft.get_peft_model(copy.deepcopy(tiny_llama), peft_config)
    _randomise(written)
    optimizer = torch.optim.SGD([p for p in written.parameters() if p.requires_grad], lr=1e-2)
    for step, batch in enumerate(_train_batches(6), start=1):
        written.base_model(**batch).loss.backward()
        optimizer.step()
        written.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    written.save_pretrained(tmp_path)
    ours = copy.deepcopy(tiny_llama)
    config = tt.load_adapter(ours, tmp_path)
    assert config.rank_pattern and all(len(v) == 4 for v in config.rank_pattern.values())
    ranks = {n: ours.get_submodule(n).deltas["default"].lora_E.shape[0] for n in config.rank_pattern}
    assert ranks == {n: sum(v) for n, v in config.rank_pattern.items()} and sum(ranks.values()) == 8
    assert_parity(_out(ours, token_ids), _out(written, token_ids), _out(tiny_llama, token_ids))
