"""Calibration samples as users have them: variable-length samples and padded batches run in batched
forwards, and padding never enters a statistic, so the result equals running the same texts one by
one unpadded (the by-hand pipeline of test_sequential_prune, which runs the whole model per sample)."""

import copy

import pytest
import torch

from test_sequential_prune import BLOCKS, by_hand, masked_state
from trimtune.core.state import wrap
from trimtune.prune.sequential import SequentialConfig, prune_sequential
from trimtune.prune.sequential.block import linear_names
from trimtune.prune.sequential.capture import capture, run_block, token_rows
from trimtune.prune.sequential.pipeline import calibration_batches, owl_block_sparsities
from trimtune.prune.sequential.samples import as_samples, batches
from trimtune.prune.sparsegpt import Hessian

LENGTHS = (24, 9, 17, 3, 24, 12)


def texts(vocab=100, lengths=LENGTHS, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def padded(samples, side, pad_id=0):
    """One batch as a tokenizer pads it: input_ids with pad_id, attention_mask 1 on real tokens."""
    length = max(len(s) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(samples), length, dtype=torch.long)
    for r, s in enumerate(samples):
        where = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        ids[r, where], mask[r, where] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def tiny_bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def assert_same(got, want, atol=1e-5):
    assert set(got) == set(want) and len(got) >= 8
    for name in want:
        assert torch.equal(got[name][1], want[name][1]), name
        assert torch.allclose(got[name][0], want[name][0], atol=atol), name


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method,sparsity", [("sparsegpt", 0.5), ("wanda", 0.5), ("sparsegpt", "2:4")])
def test_variable_length_samples_in_padded_batches_equal_one_by_one(arch, method, sparsity, tiny_llama, tiny_gpt2, tiny_bert_mlm):
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert_mlm}[arch]
    samples = texts()
    hand = by_hand(copy.deepcopy(model), samples, BLOCKS[arch], method, sparsity)
    config = SequentialConfig(method=method, sparsity=sparsity, blocksize=16, batch_tokens=72)
    assert any(b.real is not None for b in calibration_batches(samples, model, config.batch_tokens))  # padding is really there
    prune_sequential(model, samples, config)
    assert_same(masked_state(model), masked_state(hand))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_padded_batches_left_or_right_equal_the_texts_one_by_one(side, method, tiny_llama):
    samples = texts()
    hand = by_hand(copy.deepcopy(tiny_llama), samples, BLOCKS["llama"], method, 0.5)
    given = [padded(samples[:4], side, pad_id=7), padded(samples[4:], side, pad_id=7)]  # a pad id the texts use too
    prune_sequential(tiny_llama, given, SequentialConfig(method=method, sparsity=0.5, blocksize=16))
    assert_same(masked_state(tiny_llama), masked_state(hand))


def test_batched_forwards_equal_per_sample_forwards(tiny_llama):
    """The recorded calls, replayed through the blocks, give each sample's hidden states as its own forward does."""
    samples = texts()
    block_inputs = {}
    for budget in (1, 100):
        model = copy.deepcopy(tiny_llama)
        calls = capture(model, model.model.layers[0], calibration_batches(samples, model, budget))
        run_block(model.model.layers[0], calls)
        rows = []
        for call in calls:
            rows.append(token_rows(call[calls.hidden]))
        block_inputs[budget] = rows
    assert len(block_inputs[1]) == len(samples) and len(block_inputs[100]) < len(samples)
    one_by_one, batched = torch.cat(block_inputs[1]), torch.cat(block_inputs[100])
    assert batched.shape == one_by_one.shape == (sum(LENGTHS), 32)  # sorted longest first in both: same row order
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def block_hessians(block, calls, rows):
    layers = {n: wrap(block, n) for n in linear_names(block)}
    hessians = {n: Hessian(layer.weight.shape[1]) for n, layer in layers.items()}
    handles = [layer.register_forward_pre_hook(lambda m, a, n=n: hessians[n].add(rows(a[0]))) for n, layer in layers.items()]
    with torch.no_grad():
        for call in calls:
            block(**call)
    for h in handles:
        h.remove()
    return hessians


def test_hessian_with_padding_equals_one_without(tiny_llama):
    samples = texts()
    block = tiny_llama.model.layers[0]
    unpadded = capture(tiny_llama, block, calibration_batches(samples, tiny_llama, 1))
    padded_calls = capture(tiny_llama, block, calibration_batches(samples, tiny_llama, 1000))
    assert len(padded_calls) == 1 and padded_calls.real[0] is not None and not padded_calls.real[0].all()
    want = block_hessians(block, unpadded, token_rows)
    got = block_hessians(block, padded_calls, token_rows)
    every_row = block_hessians(block, padded_calls, lambda x: x.reshape(-1, x.shape[-1]))
    for name in want:
        assert got[name].tokens == want[name].tokens == sum(LENGTHS)
        assert torch.allclose(got[name].matrix, want[name].matrix, atol=1e-5, rtol=1e-4), name
        assert not torch.allclose(every_row[name].matrix, want[name].matrix, atol=1e-5, rtol=1e-4), name  # padding would show


def test_owl_ratios_ignore_padding(tiny_llama):
    samples = texts()
    config = SequentialConfig(method="wanda", sparsity=0.5, owl=True, owl_m=2.0, owl_lambda=0.1)
    one_by_one = owl_block_sparsities(copy.deepcopy(tiny_llama), calibration_batches(samples, tiny_llama, 1), config)
    batched = owl_block_sparsities(copy.deepcopy(tiny_llama), calibration_batches(samples, tiny_llama, 1000), config)
    assert one_by_one == pytest.approx(batched, abs=1e-6)
    assert len(set(one_by_one)) > 1


def test_token_rows_follows_the_call_being_run(tiny_llama):
    samples = texts(lengths=(5, 3))
    calls = capture(tiny_llama, tiny_llama.model.layers[0], calibration_batches(samples, tiny_llama, 100))
    x = torch.arange(2 * 5 * 4, dtype=torch.float).reshape(2, 5, 4)
    assert token_rows(x).shape == (10, 4)  # outside an iteration every row counts
    for _ in calls:
        assert torch.equal(token_rows(x), torch.cat([x[0], x[1, :3]]))
        with pytest.raises(ValueError, match=r"shape \(2, 4, 4\) does not match the current call's \(batch, seq\) = \(2, 5\)"):
            token_rows(x[:, :4])
    assert token_rows(x).shape == (10, 4)  # and again after it


def test_batches_group_longest_first_within_the_budget():
    samples = texts()
    got = batches(samples, 50)
    assert [b.input_ids.shape for b in got] == [(2, 24), (2, 17), (2, 9)]
    assert got[0].real is None  # two samples of 24: no padding, no mask
    assert got[1].real.sum(1).tolist() == [17, 12] and torch.equal(got[1].input_ids[1, :12], samples[5])
    assert [b.input_ids.shape[0] for b in batches(samples, 1)] == [1] * len(samples)
    rows = as_samples(padded(samples, "left"))
    assert all(torch.equal(a, b) for a, b in zip(rows, samples))


@pytest.mark.parametrize("samples,message", [
    ([], "empty list of calibration samples"),
    ([torch.ones(4, dtype=torch.long), torch.ones(0, dtype=torch.long)], "calibration sample 1 is empty"),
    ([torch.ones(4)], "calibration sample 0 must be a LongTensor of token ids, got Tensor of dtype torch.float32"),
    ([torch.ones(2, 4, dtype=torch.long)], r"calibration item 0 is Tensor of shape \(2, 4\)"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]])},
     "row 0: its real tokens are not contiguous; only left or right padding"),
    ({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])},
     "row 0 has no real tokens"),
    ([{"attention_mask": torch.ones(1, 4)}], "calibration batch 0 has no 'input_ids'"),
    ([torch.ones(4, dtype=torch.long), torch.ones(300, dtype=torch.long)],
     "calibration sample 1 has 300 tokens: seqlen 300 is longer than the model's 128 positions"),
    ("text", "calibration samples must be a LongTensor .*; got str"),
])
def test_bad_samples_are_refused_before_any_block(samples, message, tiny_llama):
    with pytest.raises(ValueError, match=message):
        prune_sequential(tiny_llama, samples, SequentialConfig(method="wanda"))
    assert not any(getattr(m, "weight_mask", None) is not None for m in tiny_llama.modules())
