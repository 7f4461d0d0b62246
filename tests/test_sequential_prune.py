"""The sequential pipeline (capture block 0's inputs, prune, replay the pruned block) equals pruning
block by block by hand, where each block's statistics come from running the *whole* model (with the
earlier blocks already pruned) and hooking that block's layers."""

import copy

import pytest
import torch

from trimtune.core.state import wrap
from trimtune.prune import PruneConfig, Wanda, collect_input_norms, prune
from trimtune.prune.granularity import NM, Element
from trimtune.prune.sequential import SequentialConfig, UnknownLayoutError, prune_sequential
from trimtune.prune.sequential.block import linear_names
from trimtune.prune.sparsegpt import Hessian, sparsegpt_layer

BLOCKS = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "bert.encoder.layer"}


def by_hand(model, samples, blocks_path, method, sparsity):
    blocks = model.get_submodule(blocks_path)
    for i, block in enumerate(blocks):
        names = [f"{blocks_path}.{i}.{n}" for n in linear_names(block)]
        layers = {n: wrap(model, n) for n in names}
        n_m = tuple(map(int, sparsity.split(":"))) if isinstance(sparsity, str) else None
        if method == "sparsegpt":
            hessians = {n: Hessian(layer.kind.to_canonical(layer.weight).shape[1]) for n, layer in layers.items()}
            handles = [layer.register_forward_pre_hook(lambda m, a, n=n: hessians[n].add(a[0])) for n, layer in layers.items()]
            with torch.no_grad():
                for sample in samples:
                    model(input_ids=sample[None])
            for h in handles:
                h.remove()
            for n, layer in layers.items():
                n_, m_ = n_m or (0, 0)
                sparsegpt_layer(layer, hessians[n], None if n_m else sparsity, n_, m_, blocksize=16)
        else:
            norms = collect_input_norms(model, [{"input_ids": s[None]} for s in samples], targets=lambda n, m: n in names)
            granularity = NM(*n_m) if n_m else Element(per_output=True)
            for n in names:
                prune(model, PruneConfig(amount=0.0 if n_m else sparsity, importance=Wanda(norms), granularity=granularity,
                                         targets=lambda c, m, n=n: c == n))
    return model


def masked_state(model):
    return {n: (m.weight.detach().clone(), m.weight_mask.clone()) for n, m in model.named_modules() if getattr(m, "weight_mask", None) is not None}


@pytest.fixture
def tiny_bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method,sparsity", [("sparsegpt", 0.5), ("sparsegpt", "2:4"), ("wanda", 0.5), ("wanda", "2:4")])
def test_pipeline_equals_block_by_block_by_hand(arch, method, sparsity, tiny_llama, tiny_gpt2, tiny_bert_mlm):
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert_mlm}[arch]
    torch.manual_seed(5)
    samples = torch.randint(3, 100, (4, 24))
    hand = by_hand(copy.deepcopy(model), samples, BLOCKS[arch], method, sparsity)
    # one sample per forward, as by hand (batched forwards: tests/test_calibration_batches.py)
    report = prune_sequential(model, samples, SequentialConfig(method=method, sparsity=sparsity, blocksize=16, batch_tokens=24))
    got, want = masked_state(model), masked_state(hand)
    assert set(got) == set(want) and len(got) >= 8
    for name in want:
        assert torch.equal(got[name][1], want[name][1]), name
        assert torch.allclose(got[name][0], want[name][0], atol=1e-6), name
    assert [row.name for row in report.layers] == list(want)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    # the pruned model still runs and differs from a dense one
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=samples[:1]).logits).all()


def test_llama_gqa_blocks_see_rotary_and_pruned_inputs(tiny_llama):
    """Block 1 must be calibrated on block 0's *pruned* outputs: a pipeline that fed dense inputs
    (or dropped position_embeddings) would give block 1 other Hessians and so other masks."""
    torch.manual_seed(5)
    samples = torch.randint(3, 100, (4, 24))
    assert tiny_llama.config.num_key_value_heads < tiny_llama.config.num_attention_heads
    dense_stats = copy.deepcopy(tiny_llama)
    seq = copy.deepcopy(tiny_llama)
    prune_sequential(seq, samples, SequentialConfig(method="sparsegpt", sparsity=0.6, blocksize=16))
    # prune block 1 of the dense copy from dense inputs: its masks must differ somewhere
    hessians = {}
    block1 = dense_stats.model.layers[1]
    for n in linear_names(block1):
        layer = wrap(block1, n)
        hessians[n] = Hessian(layer.weight.shape[1])
        layer.register_forward_pre_hook(lambda m, a, n=n: hessians[n].add(a[0]))
    with torch.no_grad():
        for s in samples:
            dense_stats(input_ids=s[None])
    differs = False
    for n, h in hessians.items():
        layer = block1.get_submodule(n)
        sparsegpt_layer(layer, h, 0.6, blocksize=16)
        differs |= not torch.equal(layer.weight_mask, seq.model.layers[1].get_submodule(n).weight_mask)
    assert differs


def test_magnitude_and_owl_run(tiny_llama):
    torch.manual_seed(5)
    samples = torch.randint(3, 100, (2, 16))
    report = prune_sequential(copy.deepcopy(tiny_llama), samples, SequentialConfig(method="magnitude", sparsity=0.5))
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    owl = prune_sequential(tiny_llama, samples, SequentialConfig(method="wanda", sparsity=0.5, owl=True, owl_lambda=0.1, owl_m=2))
    per_block = {}
    for row in owl.layers:
        block = row.name.split(".")[2]
        per_block.setdefault(block, [0, 0])
        per_block[block][0] += row.zeros
        per_block[block][1] += row.total
    shares = [z / t for z, t in per_block.values()]
    assert max(shares) - min(shares) > 0.05  # OWL moved the blocks apart ...
    assert owl.sparsity == pytest.approx(0.5, abs=0.01)  # ... and kept the mean


class _UsersClassifier(torch.nn.Module):
    """A user's own head around a Hugging Face base model: no ``base_model`` attribute."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.config = encoder, encoder.config
        self.head = torch.nn.Linear(encoder.config.hidden_size, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.mean(1))


def test_blocks_found_inside_a_users_wrapper(tiny_bert_mlm):
    wrapped = _UsersClassifier(copy.deepcopy(tiny_bert_mlm.bert))
    samples = torch.randint(3, 100, (4, 24), generator=torch.Generator().manual_seed(5))
    prune_sequential(tiny_bert_mlm, samples, SequentialConfig(method="sparsegpt", sparsity="2:4", blocksize=16))
    report = prune_sequential(wrapped, samples, SequentialConfig(method="sparsegpt", sparsity="2:4", blocksize=16))
    assert report.layers[0].name.startswith("encoder.encoder.layer.0.")
    want = {n.removeprefix("bert."): t for n, t in masked_state(tiny_bert_mlm).items()}
    got = {n.removeprefix("encoder."): t for n, t in masked_state(wrapped).items()}
    assert set(got) == set(want) and len(got) >= 8
    for name in want:
        assert torch.equal(got[name][1], want[name][1]) and torch.allclose(got[name][0], want[name][0], atol=1e-6), name


def test_model_without_the_blocks_is_a_clear_error():
    from transformers import BertConfig

    class Odd(torch.nn.Module):
        config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)

    with pytest.raises(UnknownLayoutError, match=r"Odd has no submodule 'encoder.layer'"):
        prune_sequential(Odd(), torch.ones(1, 4, dtype=torch.long), SequentialConfig())


def test_unknown_layout_lists_known_types():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(UnknownLayoutError, match=r"model_type 'opt'.*known types: bert, gpt2, llama, mistral, qwen2, roberta"):
        prune_sequential(model, torch.ones(1, 4, dtype=torch.long), SequentialConfig())


@pytest.mark.parametrize("samples,message", [
    (torch.ones(0, 8, dtype=torch.long), "nsamples must be >= 1"),
    (torch.ones(1, 500, dtype=torch.long), "seqlen 500 is longer than the model's 128 positions"),
])
def test_bad_samples(tiny_llama, samples, message):
    with pytest.raises(ValueError, match=message):
        prune_sequential(tiny_llama, samples, SequentialConfig())
    assert not any(getattr(m, "weight_mask", None) is not None for m in tiny_llama.modules())


def test_nm_width_checked_before_any_block_is_pruned():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=66, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    model = LlamaForCausalLM(config).eval()
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.down_proj: input width 66 is not a multiple of M=4"):
        prune_sequential(model, torch.ones(1, 8, dtype=torch.long), SequentialConfig(sparsity="2:4"))
    assert not any(getattr(m, "weight_mask", None) is not None for m in model.modules())


def test_owl_sparsities_follow_outliers_within_lambda():
    from trimtune.prune.owl import outlier_ratio, owl_sparsities

    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 9.0])], 2.0) == 0.25  # mean 3: only 9 is above 6
    ratios = [0.01, 0.05, 0.02, 0.10]
    s = owl_sparsities(ratios, 0.6, 0.08)
    assert sum(s) / len(s) == pytest.approx(0.6)
    assert max(s) - min(s) == pytest.approx(0.16)  # the full 2λ spread between fewest and most outliers
    assert sorted(range(4), key=lambda i: s[i]) == sorted(range(4), key=lambda i: -ratios[i])  # more outliers, less pruned
    assert owl_sparsities([0.03, 0.03], 0.5, 0.08) == [0.5, 0.5]


def test_public_api_exposes_the_pipeline():
    import trimtune as tt

    assert {"SequentialConfig", "prune_sequential", "prune_directory", "perplexity", "self_generated_samples"} <= set(tt.__all__)


def _count_forwards(model, blocks_path):
    """Forward calls of every block and of the embeddings (what a capture would run)."""
    counts = {"blocks": 0, "embeddings": 0}
    for block in model.get_submodule(blocks_path):
        block.register_forward_pre_hook(lambda m, a: counts.__setitem__("blocks", counts["blocks"] + 1))
    model.get_input_embeddings().register_forward_pre_hook(lambda m, a: counts.__setitem__("embeddings", counts["embeddings"] + 1))
    return counts


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_magnitude_runs_no_forward_and_equals_pruning_each_layer_by_hand(tiny_llama, sparsity):
    from trimtune.prune import Magnitude

    hand = copy.deepcopy(tiny_llama)
    n_m = tuple(map(int, sparsity.split(":"))) if isinstance(sparsity, str) else None
    for i, block in enumerate(hand.model.layers):
        for n in linear_names(block):
            prune(hand, PruneConfig(amount=0.0 if n_m else sparsity, importance=Magnitude(), granularity=NM(*n_m) if n_m else Element(),
                                    targets=lambda c, m, name=f"model.layers.{i}.{n}": c == name))
    counts = _count_forwards(tiny_llama, "model.layers")
    report = prune_sequential(tiny_llama, None, SequentialConfig(method="magnitude", sparsity=sparsity))
    assert counts == {"blocks": 0, "embeddings": 0}
    got, want = masked_state(tiny_llama), masked_state(hand)
    assert set(got) == set(want) and len(got) >= 8
    for name in want:
        assert torch.equal(got[name][1], want[name][1]), name
        assert torch.equal(got[name][0], want[name][0]), name
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


def test_magnitude_ignores_samples_and_wanda_still_needs_them(tiny_llama):
    with_samples = copy.deepcopy(tiny_llama)
    prune_sequential(with_samples, torch.randint(3, 100, (2, 16)), SequentialConfig(method="magnitude", sparsity=0.5))
    prune_sequential(tiny_llama, None, SequentialConfig(method="magnitude", sparsity=0.5))
    a, b = masked_state(with_samples), masked_state(tiny_llama)
    assert all(torch.equal(a[n][1], b[n][1]) for n in a)
    with pytest.raises(ValueError, match="calibration samples must be a LongTensor"):
        prune_sequential(copy.deepcopy(with_samples), None, SequentialConfig(method="wanda", sparsity=0.5))


def test_sparsegpt_reference_selection_reaches_every_layer(tiny_llama):
    """selection="reference" prunes int(entries · s) + 1 per column block of every layer (random weights: no ties)."""
    torch.manual_seed(5)
    samples = torch.randint(3, 100, (2, 16))
    exact = prune_sequential(copy.deepcopy(tiny_llama), samples, SequentialConfig("sparsegpt", 0.5, blocksize=16))
    ref = prune_sequential(tiny_llama, samples, SequentialConfig("sparsegpt", 0.5, blocksize=16, selection="reference"))
    for e, r in zip(exact.layers, ref.layers):
        rows, columns = e.shape
        blocks = -(-columns // 16)
        assert e.zeros == round(rows * 16 * 0.5) * blocks, e.name
        assert r.zeros == (int(rows * 16 * 0.5) + 1) * blocks, r.name
