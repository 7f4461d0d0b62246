"""Helpers to compare trimtune adapters with peft's: copy tensors across by key, compare outputs."""

from __future__ import annotations

import copy
import re

import torch


def peft_model(model, peft_config):
    from peft import get_peft_model

    return get_peft_model(copy.deepcopy(model), peft_config)


def peft_to_ours_key(peft_key: str, adapter: str = "default") -> str | None:
    """``base_model.model.X.lora_A.default.weight`` -> ``X.deltas.default.lora_A`` (None: not an adapter tensor)."""
    key = peft_key.removeprefix("base_model.model.")
    match = re.match(rf"(.*)\.(\w+)\.{adapter}(?:\.weight)?$", key)
    if match is None or match.group(2) == "base_layer":
        return None
    return f"{match.group(1)}.deltas.{adapter}.{match.group(2)}"


def peft_copy_to_ours_key(peft_key: str, adapter: str = "default") -> str | None:
    """A trained copy of a whole module (LN tuning's ``ln_tuning_layers``):
    ``base_model.model.X.ln_tuning_layers.default.bias`` -> ``X.copies.default.bias``."""
    match = re.match(rf"base_model\.model\.(.*)\.ln_tuning_layers\.{adapter}\.(\w+)$", peft_key)
    return None if match is None else f"{match.group(1)}.copies.{adapter}.{match.group(2)}"


@torch.no_grad()
def copy_from_peft(peft, ours, adapter: str = "default", randomize: bool = True, key_map=peft_to_ours_key) -> int:
    """Give peft's trainable adapter tensors random values (so parity is not ones == ones) and copy them to
    ours; ``key_map`` turns peft's parameter name into ours."""
    ours_state = dict(ours.named_parameters())
    copied = 0
    for key, tensor in peft.named_parameters():
        target = key_map(key, adapter)
        if target is None or not tensor.requires_grad:  # frozen extras (AdaLoRA's ranknum) are not tensors here
            continue
        if randomize:
            tensor.copy_(tensor + 0.2 * torch.randn_like(tensor))
        assert target in ours_state, f"{key} -> {target} missing in trimtune model"
        assert ours_state[target].shape == tensor.shape, (key, ours_state[target].shape, tensor.shape)
        ours_state[target].copy_(tensor)
        copied += 1
    assert copied > 0
    return copied


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_parity(ours, peft, base, atol: float = 1e-5) -> None:
    """ours == peft within atol, and the adapter visibly changed the output (so the match means something)."""
    error = (ours - peft).abs().max().item()
    effect = (ours - base).abs().max().item()
    assert error <= atol, f"trimtune and peft differ by {error:.3g}"
    assert error * 100 < effect, f"adapter effect {effect:.3g} too small to make parity error {error:.3g} meaningful"


def assert_merges_like_peft(ours, theirs, output, base_output) -> None:
    """``tt.merge`` keeps ``output(ours)`` and gives peft's ``merge_and_unload`` weights; ``tt.unmerge``
    restores every parameter. ``output``: model -> tensor; ``base_output``: the unadapted model's."""
    import trimtune as tt

    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    live = output(ours)
    tt.merge(ours)
    assert_parity(output(ours), live, base_output)
    ours_state = ours.state_dict()
    for key, weight in theirs.merge_and_unload().state_dict().items():
        torch.testing.assert_close(ours_state[key], weight, atol=1e-6, rtol=0)
    tt.unmerge(ours)
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-6, rtol=0)


def to_bnb_linear4bit(model, config=None, skip=("lm_head",)):
    """The peft + bitsandbytes baseline: every nn.Linear (but the head) becomes a bnb ``Linear4bit``
    holding the same packed weight trimtune's ``quantize_base`` makes (same rounding)."""
    import bitsandbytes as bnb

    from trimtune.core.four_bit import COMPUTE_DTYPES, QuantConfig, quantize_weight

    config = config or QuantConfig()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and name not in skip:
                new = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
                    compress_statistics=config.double_quant, quant_type=config.quant_type,
                )
                new.weight = quantize_weight(child.weight, config)
                new.weight.module = new
                if child.bias is not None:
                    new.bias = child.bias
                setattr(parent, name, new)
    return model
