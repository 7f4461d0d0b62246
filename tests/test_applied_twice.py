"""An artifact's fingerprint covers the weights it changes: a base that already holds the change (the
adapter or diff merged and saved) is refused instead of getting it twice."""

import copy

import pytest
import torch

import trimtune as tt
from trimtune.core.io.fingerprint import fingerprint


def trained(model, config):
    tt.apply(model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.3)
    return model.eval()


def unsampled_layer(model) -> str:
    """A projection whose weight the base fingerprint's few sampled values do not read (as most of a
    large model's weights): only the changed-tensor record can notice it was changed."""
    sampled = {name for name, _, _ in fingerprint(model)["samples"]}
    return next(n for n, m in model.named_modules() if n.endswith("proj") and f"{n}.weight" not in sampled)


@pytest.mark.parametrize("make", [lambda t: tt.LoraConfig(r=4, targets=[t]), lambda t: tt.IA3Config(targets=[t], feedforward=[]),
                                  lambda t: tt.DoraConfig(r=4, targets=[t])], ids=["lora", "ia3", "dora"])
def test_an_adapter_is_refused_on_a_base_that_already_holds_it(tiny_llama, token_ids, tmp_path, make):
    base = copy.deepcopy(tiny_llama)
    model = trained(tiny_llama, make(unsampled_layer(tiny_llama)))
    tt.save_adapter(model, tmp_path / "adapter")
    merged = tt.unload(copy.deepcopy(model), merge_adapters=True)
    with pytest.raises(tt.BaseMismatchError, match="looks merged into this model already|was changed since"):
        tt.load_adapter(merged, tmp_path / "adapter")
    assert not any(isinstance(m, tt.TunedLayer) for m in merged.modules())  # refused with nothing left behind
    tt.load_adapter(base, tmp_path / "adapter")  # the original base takes it, outputs as trained
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(token_ids).logits, model(token_ids).logits)
    tt.load_adapter(merged, tmp_path / "adapter", name="forced", check_base=False)  # the escape hatch stays


def test_a_diff_is_refused_on_a_base_that_already_holds_it(tiny_bert, tmp_path):
    base = copy.deepcopy(tiny_bert)
    model = trained(tiny_bert, tt.DiffConfig(targets="query|value"))
    tt.project_diffs(model, density=0.05)
    tt.save_diff(model, tmp_path / "diff")
    plain = tt.unload(copy.deepcopy(model), merge_adapters=True)
    with pytest.raises(tt.BaseMismatchError, match="looks merged into this model already|was changed since"):
        tt.load_diff(plain, tmp_path / "diff")
    assert tt.active_adapters(plain) == [] and not any(isinstance(m, tt.TunedLayer) for m in plain.modules())
    tt.load_diff(base, tmp_path / "diff")
