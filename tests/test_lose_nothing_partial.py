"""Issue 27, "lose nothing, part 2", the partial refusals: each used to refuse with a raw or wrong message,
or refuse and still leave something changed (a layer wrapped, a file behind)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trimtune as tt
from trimtune.core.tuned_layer import TunedLayer


def wrapped_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, TunedLayer)]


def test_tt_prune_is_the_verb():
    model = nn.Sequential(nn.Linear(8, 8))
    tt.prune(model, tt.PruneConfig(amount=0.5, targets="0"))
    assert tt.sparsity_report(model).to_dict()["total"]["sparsity"] == 0.5
    from trimtune.prune.granularity import NM  # noqa: F401  (the package stays importable)


def test_calibration_refusals_leave_no_layer_wrapped():
    from trimtune.prune import collect_input_norms, collect_taylor

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no calibration batches"):
        collect_input_norms(model, [])
    with pytest.raises(ValueError, match="no calibration batches"):
        collect_taylor(model, [], lambda m, b: m(b).sum())
    with pytest.raises(ValueError, match="must return a scalar loss tensor"):
        collect_taylor(model, [torch.randn(3, 4)], lambda m, b: None)
    assert wrapped_layers(model) == []


@pytest.mark.parametrize("layer", [nn.Conv2d(3, 4, 3), nn.Embedding(10, 4)])
def test_vera_on_a_non_linear_layer_leaves_it_unwrapped(layer):
    model = nn.Sequential(layer)
    with pytest.raises(ValueError, match="VeRA supports Linear and GPT-2 Conv1D layers"):
        tt.apply(model, tt.VeraConfig(r=2, targets="0"))
    assert wrapped_layers(model) == [] and type(model[0]) is type(layer)


def test_owl_lambda_is_checked_for_the_whole_vector_and_leaves_the_model_as_it_was(tiny_llama):
    from trimtune.core.config import ConfigError
    from trimtune.prune.owl import owl_sparsities
    from trimtune.prune.sequential import SequentialConfig, prune_sequential

    s = owl_sparsities([0.0, 0.0, 0.0, 1.0], 0.5, 0.2)  # one outlier-rich block among plain ones
    assert s[3] == pytest.approx(0.5 - 0.3) and max(s) - min(s) == pytest.approx(0.4)  # moved by 1.5 λ; span 2 λ
    with pytest.raises(ConfigError, match=r"OWL lambda must be in \[0, 0.5\).*at most 0.250 always fits"):
        SequentialConfig("wanda", 0.5, owl=True, owl_lambda=0.5)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    samples = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"OWL lambda 0.45 gives block \d sparsity -?0\.\d+, outside \[0, 1\).*at most 0.150"):
        prune_sequential(tiny_llama, samples, SequentialConfig("wanda", 0.3, owl=True, owl_lambda=0.45, owl_m=2))
    assert wrapped_layers(tiny_llama) == []
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.state_dict().items())


def test_owl_help_says_what_lambda_bounds(capsys):
    from trimtune.cli import main

    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "span 2 x lambda" in text and "largest change" not in text


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_text_init_tokenizer_refusals_name_the_problem(tiny_llama, tmp_path, method):
    """Partial items: a tokenizer path that is not a directory gave the hub's raw OSError, tokenizer=42
    "'int' object is not callable", and a tokenizer larger than the model's vocabulary a raw IndexError."""
    from trimtune.core.config import ConfigError
    from trimtune.models import minilm_path

    make = {"prompt": tt.PromptTuningConfig, "prefix": tt.PrefixTuningConfig}[method]
    cases = [("no/such/tokenizer", "tokenizer 'no/such/tokenizer' is not a tokenizer directory"),
             (str(minilm_path()), "as token id \\d+, but the model embeds only 100 token ids")]  # MiniLM: 30522 ids
    for tokenizer, message in cases:
        with pytest.raises(ConfigError, match=message):
            tt.apply(tiny_llama, make(num_virtual_tokens=4, init="TEXT", init_text="the soup was hot", tokenizer=tokenizer))
    with pytest.raises(ConfigError, match="tokenizer must be a tokenizer directory .* or a tokenizer object, got int 42"):
        make(num_virtual_tokens=4, init="TEXT", init_text="the soup", tokenizer=42)


def test_a_refused_adalora_run_keeps_its_config_for_a_retry(tiny_llama):
    """Partial item: a refused train stored total_step in the config, so a correct retry was refused with the stale value."""
    from trimtune.core.config import ConfigError

    config = tt.AdaLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=2)  # total_step from the loop
    tt.apply(tiny_llama, config)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 100, (12, 2, 8))]
    with pytest.raises(ConfigError, match="the budget schedule is empty"):
        tt.train(tiny_llama, data, max_steps=3, lr=1e-2, progress=False)  # 3 steps: no room between tinit and tfinal
    assert config.total_step is None
    tt.train(tiny_llama, data, max_steps=12, lr=1e-2, progress=False)
    assert config.total_step == 12


def test_adapter_file_targets_peft_refuses_are_refused_clearly(tiny_llama, tmp_path):
    """Partial items: a regex target_modules with layers_to_transform silently adapted every layer (peft
    refuses it); target_modules ".*" was refused as "targets None matched"."""
    import copy
    import json

    from trimtune.core.config import ConfigError
    from trimtune.core.targets import TargetError

    model = copy.deepcopy(tiny_llama)
    tt.apply(model, tt.LoraConfig(r=2, targets=["q_proj"]))
    tt.save_adapter(model, tmp_path / "a")
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    for fields, error, message in [
        ({"target_modules": r".*\.q_proj", "layers_to_transform": [0]}, ConfigError, "apply only to a list of module names"),
        ({"target_modules": ".*"}, TargetError, r"targets PeftTargets\('\.\*'\) matched modules that cannot be wrapped"),
    ]:
        config_path.write_text(json.dumps({**config, **fields}))
        fresh = copy.deepcopy(tiny_llama)
        with pytest.raises(error, match=message):
            tt.load_adapter(fresh, tmp_path / "a", check_base=False)
        assert wrapped_layers(fresh) == []
