"""Diff artifacts: exact round trip, index coding, refusal of damaged or foreign files with the base intact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import trimtune as tt
from trimtune.core.io.fingerprint import BaseMismatchError
from trimtune.core.io.peft_format import FormatError
from trimtune.methods.diff.artifact import (
    CONFIG_FILE,
    TENSORS_FILE,
    artifact_bytes,
    decode_indices,
    encode_indices,
    load_diff,
    save_diff,
)
from trimtune.methods.diff.penalty import diff_deltas


def make_bert(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=100, max_position_embeddings=64, num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def trained_diff(model, name="task", seed=0, density=0.05, **config):
    """A projected diff with random values and a changed head copy, as after training."""
    tt.apply(model, tt.DiffConfig(density=density, modules_to_save=["classifier"], **config), name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, delta in diff_deltas(model, name):
            for param in delta.diff.values():
                param.copy_(torch.randn(param.shape, generator=gen))
        model.classifier.copies[name].weight.add_(0.5 + seed)
    tt.project_diffs(model, name)
    return model


@pytest.fixture
def saved(tmp_path, token_ids):
    model = trained_diff(make_bert(), penalty="l0", group="row")
    save_diff(model, tmp_path / "task", "task")
    return tmp_path / "task", model(token_ids).logits


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_round_trip_gives_identical_outputs(saved, token_ids):
    path, expected = saved
    fresh = make_bert()
    config = load_diff(fresh, path, "task")
    assert torch.equal(fresh(token_ids).logits, expected)
    assert config.penalty == "none" and config.modules_to_save == ["classifier"]
    record = json.loads((path / CONFIG_FILE).read_text())
    assert record["kept"] == round(0.05 * record["total"]) and record["density"] == record["kept"] / record["total"]


def test_half_precision_values_are_smaller_and_close(tmp_path, token_ids):
    model = trained_diff(make_bert(), penalty="l1")
    save_diff(model, tmp_path / "fp32", "task")
    save_diff(model, tmp_path / "fp16", "task", values_dtype="float16")
    assert artifact_bytes(tmp_path / "fp16") < artifact_bytes(tmp_path / "fp32")
    fresh = make_bert()
    load_diff(fresh, tmp_path / "fp16", "task")
    torch.testing.assert_close(fresh(token_ids).logits, model(token_ids).logits, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="values_dtype"):
        save_diff(model, tmp_path / "x", "task", values_dtype="int8")


@pytest.mark.parametrize("index, numel, encoding", [
    ([0, 3, 65538, 70000], 80000, "gap16"),  # gaps up to 65535 fit in 16 bits
    ([5, 70000], 80000, "int32"),  # a gap of 69995 does not
    ([1, 2**31], 2**31 + 5, "int64"),  # nor does a tensor past int32's range
])
def test_index_coding_round_trips(index, numel, encoding):
    index = torch.tensor(index)
    stored, used = encode_indices(index, numel)
    assert used == encoding
    assert torch.equal(decode_indices(stored, used), index)


def test_saving_a_dense_diff_is_refused(tmp_path):
    model = make_bert()
    tt.apply(model, tt.DiffConfig(), "task")
    with pytest.raises(ValueError, match="project_diffs"):
        save_diff(model, tmp_path / "d", "task")


def _rewrite_tensors(path, change):
    """Change the stored tensors and re-record their hash: damage only the deeper checks can see."""
    import hashlib

    tensors = load_file(path / TENSORS_FILE)
    change(tensors)
    save_file(tensors, path / TENSORS_FILE)
    record = json.loads((path / CONFIG_FILE).read_text())
    record["tensors_sha256"] = hashlib.sha256((path / TENSORS_FILE).read_bytes()).hexdigest()
    (path / CONFIG_FILE).write_text(json.dumps(record))


def _first_key(tensors, suffix):
    return next(k for k in sorted(tensors) if k.endswith(suffix))


def _set(tensors, suffix, make):
    key = _first_key(tensors, suffix)
    tensors[key] = make(tensors[key])


DAMAGE = {
    "truncated tensors": lambda p: (p / TENSORS_FILE).write_bytes((p / TENSORS_FILE).read_bytes()[:-100]),
    "flipped byte": lambda p: (p / TENSORS_FILE).write_bytes(_flip((p / TENSORS_FILE).read_bytes())),
    "truncated json": lambda p: (p / CONFIG_FILE).write_text((p / CONFIG_FILE).read_text()[:50]),
    "missing tensors": lambda p: (p / TENSORS_FILE).unlink(),
    "index out of range": lambda p: _rewrite_tensors(p, lambda t: _set(t, ".index", lambda i: torch.full_like(i, 30000))),
    "nan value": lambda p: _rewrite_tensors(p, lambda t: _set(t, ".values", lambda v: v.clone().fill_(float("nan")))),
    "short values": lambda p: _rewrite_tensors(p, lambda t: _set(t, ".values", lambda v: v[:-1].clone())),
    "index dtype": lambda p: _rewrite_tensors(p, lambda t: _set(t, ".index", lambda i: i.to(torch.float32))),
    "repeated index": lambda p: _rewrite_tensors(p, lambda t: _set(t, ".index", lambda i: torch.cat([i[:1], i[1:].clone().fill_(0)]))),
    "extra tensor": lambda p: _rewrite_tensors(p, lambda t: t.update(stray=torch.zeros(2))),
    "bad head": lambda p: _rewrite_tensors(p, lambda t: _set(t, "classifier.weight", lambda w: w[:2].clone())),
}


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_artifacts_are_refused_with_the_base_intact(saved, damage, token_ids):
    path, _ = saved
    DAMAGE[damage](path)
    model = make_bert()
    tt.apply(model, tt.LoraConfig(r=2), "other")  # an adapter that must survive the failed load
    before, outputs = snapshot(model), model(token_ids).logits
    with pytest.raises((FormatError, FileNotFoundError)):
        load_diff(model, path, "task")
    assert_same_state(model, before)
    assert tt.active_adapters(model) == ["other"] and list(tt.core.state.state_of(model).adapters) == ["other"]
    assert torch.equal(model(token_ids).logits, outputs)


def test_a_diff_for_another_base_is_refused(saved, token_ids):
    path, expected = saved
    other = make_bert(seed=1)
    before = snapshot(other)
    with pytest.raises(BaseMismatchError):
        load_diff(other, path, "task")
    assert_same_state(other, before)
    load_diff(other, path, "task", check_base=False)  # the user's explicit override
    assert not torch.equal(other(token_ids).logits, expected)


def test_the_same_diff_twice_is_refused(saved):
    path, _ = saved
    model = make_bert()
    load_diff(model, path, "task")
    with pytest.raises(ValueError, match="already applied .* as adapter 'task'"):
        load_diff(model, path, "again")
    with pytest.raises(ValueError, match="already has an adapter named 'task'"):
        load_diff(model, path, "task")


def test_several_task_diffs_switch_remove_and_merge(tmp_path, token_ids):
    outputs = {}
    for seed, name in enumerate(("a", "b")):
        model = trained_diff(make_bert(), name, seed=seed, penalty="l1")
        save_diff(model, tmp_path / name, name)
        outputs[name] = model(token_ids).logits
    base = make_bert()
    base_out, base_state = base(token_ids).logits, snapshot(base)
    for name in ("a", "b"):
        load_diff(base, tmp_path / name, name)
    for name in ("a", "b", "a"):
        tt.set_adapter(base, name)
        assert torch.equal(base(token_ids).logits, outputs[name])
    tt.delete_adapter(base, "a")  # remove in place
    tt.set_adapter(base, "b")
    tt.merge(base)  # and fold the other in permanently
    torch.testing.assert_close(base(token_ids).logits, outputs["b"], rtol=1e-5, atol=1e-5)
    plain = tt.unload(base, merge_adapters=True)
    assert not any(".deltas." in k or ".copies." in k for k in plain.state_dict())
    torch.testing.assert_close(plain(token_ids).logits, outputs["b"], rtol=1e-5, atol=1e-5)
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(v, base_state[k])]
    assert changed and all(k.endswith(("weight", "bias")) for k in changed)
    assert torch.equal(make_bert()(token_ids).logits, base_out)


def test_minilm_diff_at_half_a_percent_is_under_one_percent_of_the_model_file(minilm_path, tmp_path):
    from pathlib import Path

    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path)
    tt.apply(model, tt.DiffConfig(density=0.005, penalty="none"), "task")
    with torch.no_grad():
        for _, delta in diff_deltas(model, "task"):
            for param in delta.diff.values():
                param.normal_()
    report = tt.project_diffs(model)
    save_diff(model, tmp_path / "d", "task")
    dense_file = (Path(minilm_path) / "model.safetensors").stat().st_size
    ratio = artifact_bytes(tmp_path / "d") / dense_file
    assert report["kept"] == round(0.005 * report["total"])
    assert ratio <= 0.01, f"diff is {ratio:.2%} of the dense file"


def test_a_diff_is_saved_alongside_a_lora_adapter(tmp_path, token_ids):
    from trimtune.verbs.files import load_adapter, save_adapter

    model = make_bert()
    tt.apply(model, tt.LoraConfig(r=2), "lora")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    trained_diff(model, "task", penalty="l1")
    tt.set_adapter(model, ["lora", "task"])  # both deltas add up on the shared query/value layers
    expected = model(token_ids).logits
    save_adapter(model, tmp_path / "both", "lora")
    save_diff(model, tmp_path / "both", "task")  # same directory: the files do not collide
    assert {p.name for p in (tmp_path / "both").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", CONFIG_FILE, TENSORS_FILE}
    fresh = make_bert()
    load_adapter(fresh, tmp_path / "both", "lora")
    load_diff(fresh, tmp_path / "both", "task")
    tt.set_adapter(fresh, ["lora", "task"])
    torch.testing.assert_close(fresh(token_ids).logits, expected, rtol=0, atol=1e-6)
    tt.set_adapter(fresh, "lora")
    assert not torch.allclose(fresh(token_ids).logits, expected)
