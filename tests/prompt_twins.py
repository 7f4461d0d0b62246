"""Helpers for the input-delta tests: a peft twin of a trimtune model, and comparisons."""

from __future__ import annotations

import copy

import torch

import trimtune as tt


def with_adapter(base, config, name="default"):
    model = copy.deepcopy(base)
    tt.apply(model, config, name)
    return model


def delta_of(model, name="default"):
    return model.trimtune_prompts.deltas[name]


def peft_twin(base, ours, peft_config, name="default"):
    """peft's model of the same method, with our delta's weights (same module names) copied in."""
    import peft

    twin = peft.get_peft_model(copy.deepcopy(base), peft_config).eval()
    twin.prompt_encoder["default"].load_state_dict(delta_of(ours, name).state_dict(), strict=True)
    return twin


def padded(token_ids):
    mask = torch.ones_like(token_ids)
    mask[0, :2] = 0  # left padding on the first row
    return mask


def generate(model, ids, mask, sample=False, seed=5):
    torch.manual_seed(seed)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=sample, pad_token_id=0)
