"""QLoRA / 4-bit bases: packing, forward by hand and against peft + bitsandbytes, training, merge, errors."""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from _peft_parity import copy_from_peft, logits, peft_model, to_bnb_linear4bit

import trimtune as tt
from trimtune.core.four_bit import QuantConfig, dequantize_weight, is_4bit


def _weight_bytes(model):
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.endswith("proj.weight"))


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("fp4", False)])
def test_quantize_base_packs_linear_weights(tiny_llama, token_ids, quant_type, double_quant):
    fp32_bytes = _weight_bytes(tiny_llama)
    fp32_params = tt.trainable_parameters(tiny_llama)[1]
    names = tt.quantize_base(tiny_llama, config=QuantConfig(quant_type=quant_type, double_quant=double_quant))
    assert len(names) == 14 and "lm_head" not in names  # 7 linear layers x 2 decoder layers
    q_proj = tiny_llama.model.layers[0].self_attn.q_proj
    assert is_4bit(q_proj.weight) and q_proj.weight.dtype == torch.uint8
    assert q_proj.weight.quant_state.quant_type == quant_type and q_proj.weight.quant_state.nested == double_quant
    assert _weight_bytes(tiny_llama) == fp32_bytes / 8  # 4 bits instead of 32
    assert tt.trainable_parameters(tiny_llama)[1] == fp32_params  # counted as parameters, not bytes
    assert "model.layers.0.self_attn.q_proj.weight" in tiny_llama.state_dict()  # original key kept
    x = torch.randn(3, 32)
    torch.testing.assert_close(q_proj(x), F.linear(x, dequantize_weight(q_proj.weight)), atol=1e-5, rtol=1e-5)


# bf16 compute (QLoRA's own setting, and ~2x faster matmuls on CPUs with bf16 units): the 4-bit
# matmuls run in bf16 on both sides, the rest of the model and the LoRA factors stay fp32
@pytest.mark.parametrize(("compute_dtype", "atol"), [("float32", 1e-5), ("bfloat16", 1e-4)])
def test_qlora_matches_peft_on_bitsandbytes_linear4bit(tiny_llama, token_ids, compute_dtype, atol):
    from peft import LoraConfig as PeftLoraConfig

    quant = QuantConfig(compute_dtype=compute_dtype)
    peft = peft_model(to_bnb_linear4bit(copy.deepcopy(tiny_llama), quant),
                      PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ours = tt.apply(copy.deepcopy(tiny_llama), tt.QLoraConfig(r=4, alpha=8, compute_dtype=compute_dtype))
    copy_from_peft(peft, ours)
    peft_out, ours_out = logits(peft, token_ids), logits(ours, token_ids)
    assert ours_out.dtype == torch.float32
    torch.testing.assert_close(ours_out, peft_out, atol=atol, rtol=atol)
    assert (ours_out - logits(tiny_llama, token_ids)).abs().max() > 1e-3
    assert tt.trainable_parameters(ours) == tuple(peft.get_nb_trainable_parameters())


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_qlora_trains_lora_only(tiny_llama, token_ids, compute_dtype):
    tt.apply(tiny_llama, tt.QLoraConfig(r=4, alpha=8, init="gaussian", compute_dtype=compute_dtype))
    tiny_llama.train()
    params = [p for p in tiny_llama.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = tiny_llama(input_ids=token_ids, labels=token_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05
    assert {n for n, p in tiny_llama.named_parameters() if p.grad is not None} == {
        n for n, p in tiny_llama.named_parameters() if ".deltas.default.lora_" in n
    }


def test_merge_dequantises_with_warning(tiny_llama, token_ids):
    tt.apply(tiny_llama, tt.QLoraConfig(r=4, targets=["q_proj"]))
    with torch.no_grad():
        for layer in tiny_llama.model.layers:
            layer.self_attn.q_proj.deltas["default"].lora_B.normal_()
    adapted = logits(tiny_llama, token_ids)
    with pytest.warns(UserWarning, match="dequantises it.*quantize_base"):
        tt.merge(tiny_llama)
    q_proj = tiny_llama.model.layers[0].self_attn.q_proj
    assert not is_4bit(q_proj.weight) and q_proj.weight.dtype == torch.float32
    assert is_4bit(tiny_llama.model.layers[0].self_attn.k_proj.weight)  # untouched layers stay packed
    torch.testing.assert_close(logits(tiny_llama, token_ids), adapted, atol=1e-5, rtol=1e-5)
    tt.unmerge(tiny_llama)
    tt.quantize_base(tiny_llama)  # the way back to 4 bits
    assert is_4bit(q_proj.weight)


def test_bad_input(monkeypatch, tiny_llama):
    with pytest.raises(tt.ConfigError, match="quant_type"):
        tt.QLoraConfig(quant_type="int4")
    with pytest.raises(tt.ConfigError, match="compute_dtype"):
        QuantConfig(compute_dtype="float64")
    with pytest.raises(ValueError, match="only nn.Linear"):
        tt.quantize_base(tiny_llama, targets=["embed_tokens"])
    assert not isinstance(tiny_llama.model.embed_tokens, tt.TunedLayer)  # refused before wrapping anything
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        tt.apply(tiny_llama, tt.QLoraConfig())


def test_pack_for_cpu_inference_takes_the_bitsandbytes_kernel_and_back(token_ids):
    from transformers import LlamaConfig, LlamaForCausalLM

    from trimtune.core.four_bit import cpu_kernel_available

    torch.manual_seed(0)  # widths the kernel takes: outputs in blocks of 32, inputs in whole 64-blocks
    tiny_llama = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    tt.apply(tiny_llama, tt.QLoraConfig(r=4, alpha=8, init="gaussian"))
    tiny_llama.eval()
    layer = tiny_llama.get_submodule("model.layers.0.self_attn.q_proj")
    packed_before = layer.weight.data.clone()
    with torch.no_grad():
        exact = tiny_llama(token_ids).logits
    if not cpu_kernel_available():  # the kernel needs AVX512-BF16 / AMX: refused with the reason
        with pytest.raises(RuntimeError, match="AVX512-BF16"):
            tt.pack_4bit_for_cpu(tiny_llama)
        return
    names = tt.pack_4bit_for_cpu(tiny_llama)
    assert "model.layers.0.self_attn.q_proj" in names and not torch.equal(layer.weight.data.flatten()[:64], packed_before.flatten()[:64])
    with torch.no_grad():
        fast = tiny_llama(token_ids).logits
    assert 0 < float((fast - exact).abs().max()) < 2e-2 * float(exact.abs().max())  # bf16 compute, not the fp32 path
    with pytest.raises(RuntimeError, match="packed for CPU inference"):
        tiny_llama(token_ids)  # with gradients on: training through the bf16 kernel is refused
    tt.pack_4bit_for_cpu(tiny_llama, enable=False)
    assert torch.equal(layer.weight.data, packed_before)
    with torch.no_grad():
        assert torch.equal(tiny_llama(token_ids).logits, exact)
