"""Mixed-adapter batches: each example with its own adapter equals running it alone, and equals peft's."""

import copy
import threading

import pytest
import torch
from torch import nn

import trimtune as tt
from _peft_parity import copy_from_peft

NAMES = ["fr", "__base__", "de", "fr"]


def _two_loras(model, targets_b="q_proj|v_proj|down_proj"):
    tt.apply(model, tt.LoraConfig(r=4, alpha=8, targets="q_proj|v_proj"), "fr")
    tt.apply(model, tt.LoraConfig(r=2, alpha=4, targets=targets_b), "de")
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)
    return model


def _alone(model, ids, names, run):
    """Each row run on its own, with its adapter the only active one (none for "__base__")."""
    rows = []
    for row, name in enumerate(names):
        if name == "__base__":
            with tt.disable_adapters(model):
                rows.append(run(ids[row:row + 1]))
        else:
            tt.set_adapter(model, name)
            rows.append(run(ids[row:row + 1]))
    return torch.cat(rows)


def _logits(model):
    return lambda ids: model(input_ids=ids).logits


def _mixed_equals_alone(model, seed):
    """The logits of a mixed batch, checked against each row alone; returns them with the base's."""
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(seed))
    with tt.mixed_batch(model, NAMES):
        mixed = model(input_ids=ids).logits
    torch.testing.assert_close(mixed, _alone(model, ids, NAMES, _logits(model)), atol=1e-5, rtol=0)
    with tt.disable_adapters(model):
        return mixed, model(input_ids=ids).logits


@torch.no_grad()
def test_forward_equals_each_row_alone(tiny_llama):
    mixed, base = _mixed_equals_alone(_two_loras(tiny_llama), seed=1)
    assert (mixed[0] - base[0]).abs().max() > 0.1 and (mixed[2] - base[2]).abs().max() > 0.1  # the adapters do act
    torch.testing.assert_close(mixed[1], base[1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_greedy_generate_equals_each_row_alone(tiny_llama):
    model = _two_loras(tiny_llama)
    ids = torch.randint(3, 100, (4, 6), generator=torch.Generator().manual_seed(2))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_scores": True, "return_dict_in_generate": True}
    with tt.mixed_batch(model, NAMES):
        mixed = model.generate(ids, **kwargs)
    alone = _alone(model, ids, NAMES, lambda row: model.generate(row, **kwargs).sequences)
    assert torch.equal(mixed.sequences, alone)
    with tt.disable_adapters(model):
        base = model.generate(ids, **kwargs).sequences
    assert not torch.equal(mixed.sequences[[0, 2]], base[[0, 2]])  # the adapters change what is generated
    # the scores of the last step, row by row, as each row alone gives them
    last = _alone(model, ids, NAMES, lambda row: model.generate(row, **kwargs).scores[-1])
    torch.testing.assert_close(mixed.scores[-1], last, atol=1e-5, rtol=0)


@torch.no_grad()
def test_beam_search_takes_each_name_repeated_per_beam(tiny_llama):
    model = _two_loras(tiny_llama)
    ids = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(7))
    kwargs = {"max_new_tokens": 4, "do_sample": False, "num_beams": 2}
    with tt.mixed_batch(model, ["fr", "fr", "de", "de"]):
        mixed = model.generate(ids, **kwargs)
    assert torch.equal(mixed, _alone(model, ids, ["fr", "de"], lambda row: model.generate(row, **kwargs)))
    with tt.mixed_batch(model, ["fr", "de"]), pytest.raises(ValueError, match="repeat each name that many times"):
        model.generate(ids, **kwargs)


@torch.no_grad()
def test_equals_peft_mixed_batch(tiny_llama):
    import peft

    theirs = peft.get_peft_model(copy.deepcopy(tiny_llama), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                 adapter_name="fr")
    theirs.add_adapter("de", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    model = _two_loras(tiny_llama)
    for name in ("fr", "de"):
        theirs.set_adapter(name)
        copy_from_peft(theirs, model, adapter=name)
    theirs.eval()
    ids = torch.randint(3, 100, (4, 7), generator=torch.Generator().manual_seed(3))
    with tt.mixed_batch(model, NAMES):
        ours = model(input_ids=ids).logits
    peft_logits = theirs(input_ids=ids, adapter_names=NAMES).logits
    torch.testing.assert_close(ours, peft_logits, atol=1e-5, rtol=0)
    kwargs = {"max_new_tokens": 5, "do_sample": False}
    with tt.mixed_batch(model, NAMES):
        ours_generated = model.generate(ids, **kwargs)
    assert torch.equal(ours_generated, theirs.generate(input_ids=ids, adapter_names=NAMES, **kwargs))
    with tt.disable_adapters(model):
        assert (ours - model(input_ids=ids).logits).abs().max() > 0.1


@torch.no_grad()
def test_weight_and_input_deltas_and_head_copies_mix(tiny_bert):
    """LoHa changes the weight and IA3 on the FFN scales the input (their rows run apart); each adapter
    has its own copy of the classifier head."""
    tt.apply(tiny_bert, tt.LoHaConfig(r=2, targets="query|value", modules_to_save=["classifier"]), "fr")
    tt.apply(tiny_bert, tt.IA3Config(modules_to_save=["classifier"]), "de")
    torch.manual_seed(4)
    for name, param in tiny_bert.named_parameters():
        if ".deltas." in name or ".copies." in name:
            param.add_(0.3 * torch.randn_like(param))
    mixed, base = _mixed_equals_alone(tiny_bert, seed=4)
    assert (mixed[[0, 2]] - base[[0, 2]]).abs().max() > 0.05


@torch.no_grad()
def test_another_thread_runs_the_active_adapter_meanwhile(tiny_llama):
    model = _two_loras(tiny_llama)
    tt.set_adapter(model, "de")
    ids = torch.randint(3, 100, (4, 5), generator=torch.Generator().manual_seed(5))
    expected = model(input_ids=ids).logits
    seen = {}
    with tt.mixed_batch(model, ["fr", "fr", "fr", "fr"]):
        worker = threading.Thread(target=lambda: seen.setdefault("logits", model(input_ids=ids).logits))
        worker.start()
        worker.join()
        mixed = model(input_ids=ids).logits
    torch.testing.assert_close(seen["logits"], expected, atol=1e-6, rtol=0)
    assert (mixed - expected).abs().max() > 0.1  # this thread did run adapter fr


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, tt.active_adapters(model)


@torch.no_grad()
def test_bad_input_is_refused_and_the_model_stays_as_it_was(tiny_llama):
    model = _two_loras(tiny_llama)
    ids = torch.randint(3, 100, (4, 5), generator=torch.Generator().manual_seed(6))
    before, active = _state(model)
    logits = model(input_ids=ids).logits
    with pytest.raises(ValueError, match=r"unknown adapter 'es'; the model has \['fr', 'de'\] \(or '__base__'"):
        with tt.mixed_batch(model, ["fr", "es", "de", "fr"]):
            pass
    with pytest.raises(TypeError, match="a list of adapter names, one per example; got str"):
        with tt.mixed_batch(model, "fr"):
            pass
    with pytest.raises(ValueError, match="the list is empty"):
        with tt.mixed_batch(model, []):
            pass
    with pytest.raises(ValueError, match=r"mixed_batch has 3 adapter names but model\.layers\.0\.self_attn\.q_proj got a batch of 4"):
        with tt.mixed_batch(model, ["fr", "de", "fr"]):
            model(input_ids=ids)
    model.train()
    with pytest.raises(ValueError, match=r"for inference: call model\.eval\(\) first"):
        with tt.mixed_batch(model, NAMES):
            pass
    model.eval()
    after, active_after = _state(model)
    assert active_after == active and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(model(input_ids=ids).logits, logits, atol=0, rtol=0)


@torch.no_grad()
def test_merged_and_prompt_adapters_are_refused(tiny_llama):
    model = _two_loras(tiny_llama)
    tt.set_adapter(model, "fr")
    tt.merge(model)
    with pytest.raises(ValueError, match=r"adapters \['fr'\] are merged into the weights.*unmerge\(model\) before a mixed batch"):
        with tt.mixed_batch(model, NAMES):
            pass
    tt.unmerge(model)
    tt.apply(model, tt.PromptTuningConfig(num_virtual_tokens=2), "p")
    with pytest.raises(ValueError, match=r"adapters \['p'\] \(PromptTuningConfig\) cannot be mixed in a batch"):
        with tt.mixed_batch(model, ["fr", "p"]):
            pass
    with pytest.raises(ValueError, match=r"adapters \['p'\] .*with no such adapter active"):  # p is active: it would reach every row
        with tt.mixed_batch(model, ["fr", "de"]):
            pass
    tt.set_adapter(model, "fr")
    with tt.mixed_batch(model, ["fr", "de"]):  # the prompt adapter's host takes no part when neither named nor active
        assert model(input_ids=torch.tensor([[5, 6], [7, 8]])).logits.shape == (2, 2, 100)


def test_a_batch_split_off_the_first_dimension_is_caught():
    """A layer seeing rows that are not the examples (tokens flattened) is refused, not misrouted."""
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    tt.apply(model, tt.LoraConfig(r=2, targets=["0"]), "fr")
    with tt.mixed_batch(model, ["fr", "__base__"]), pytest.raises(ValueError, match="got a batch of 6 examples"):
        model(torch.randn(6, 4))


@pytest.mark.parametrize("config", [
    tt.DoraConfig(r=2, targets="q_proj|v_proj"),
    tt.VeraConfig(r=8, targets="q_proj|v_proj"),
    tt.LoKrConfig(r=2, targets="q_proj|v_proj"),
    tt.OFTConfig(oft_block_size=8, targets="q_proj|v_proj"),
    tt.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, targets="q_proj|v_proj"),
    tt.AdaLoraConfig(init_r=4, target_r=2, targets="q_proj|v_proj", total_step=10),
    tt.BottleneckConfig(reduction_factor=8),
    tt.TrainableTokensConfig(token_indices=list(range(3, 100, 2))),
    tt.LNTuningConfig(),
    tt.DiffConfig(targets="q_proj|v_proj"),
], ids=lambda config: type(config).__name__)
@torch.no_grad()
def test_every_weight_method_mixes_with_lora(tiny_llama, config):
    tt.apply(tiny_llama, tt.LoraConfig(r=2, targets="q_proj|v_proj"), "fr")
    tt.apply(tiny_llama, config, "de")
    torch.manual_seed(6)
    for name, param in tiny_llama.named_parameters():
        if ".deltas." in name or ".copies." in name:
            param.add_(0.3 * torch.randn_like(param))
    mixed, base = _mixed_equals_alone(tiny_llama, seed=6)
    assert (mixed[2] - base[2]).abs().max() > 0.05  # the second adapter does act on its row
