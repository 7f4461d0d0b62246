"""Activation (gradient) checkpointing with every weight-side method: same gradients as without."""

import copy

import pytest
import torch

import trimtune as tt

METHODS = {
    "lora": lambda: tt.LoraConfig(r=4, init="gaussian"),
    "ia3": lambda: tt.IA3Config(init="random"),
    "bottleneck": lambda: tt.BottleneckConfig(reduction_factor=4),
    "adalora": lambda: tt.AdaLoraConfig(init_r=4, target_r=2, total_step=10),
    "qlora": lambda: tt.QLoraConfig(r=4, init="gaussian"),
    "ln_tuning": tt.LNTuningConfig,
    "trainable_tokens": lambda: tt.TrainableTokensConfig(token_indices=list(range(3, 100))),  # every token of the batch
    "loha": lambda: tt.LoHaConfig(r=4, init="random"),  # their change joins the weight before the op
    "lokr": lambda: tt.LoKrConfig(r=4, init="random"),
}


def _grads(model, ids):
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_gradients_match(method, use_reentrant, tiny_llama, token_ids):
    tt.apply(tiny_llama, METHODS[method]())
    with torch.no_grad():  # give every adapter a non-trivial state, so every gradient is non-zero
        for name, param in tiny_llama.named_parameters():
            if param.requires_grad and param.abs().sum() == 0:
                param.normal_(std=0.1)
    reference = _grads(tiny_llama, token_ids)
    checkpointed = copy.deepcopy(tiny_llama)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert checkpointed.is_gradient_checkpointing
    grads = _grads(checkpointed, token_ids)
    assert grads.keys() == reference.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, reference[name], atol=1e-5, rtol=1e-4)


def test_reentrant_needs_input_grads_when_embeddings_are_frozen(tiny_llama, token_ids):
    """With frozen embeddings nothing entering a reentrant checkpoint requires grad, so the adapters
    inside get none; transformers' gradient_checkpointing_enable turns on input grads for that."""
    tt.apply(tiny_llama, tt.LoraConfig(r=4, init="gaussian"))
    tiny_llama.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    tiny_llama.disable_input_require_grads()
    tiny_llama.train()
    loss = tiny_llama(input_ids=token_ids, labels=token_ids).loss
    if loss.requires_grad:
        loss.backward()
    assert all(p.grad is None for n, p in tiny_llama.named_parameters() if "lora_B" in n)
    tiny_llama.enable_input_require_grads()
    tiny_llama(input_ids=token_ids, labels=token_ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in tiny_llama.named_parameters() if "lora_B" in n)
