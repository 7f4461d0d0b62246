"""Which Hugging Face causal LMs a GGUF file can hold, and how their settings and tensors are written.

Per ``config.model_type``: llama.cpp's architecture, the hyperparameters it reads (head counts, head
width, FFN width and block count from the config, so a shrunk model's shapes are written as they
are), and the one tensor change each needs:

- Llama and Mistral: llama.cpp's ``llama`` rotates adjacent pairs of a head's query/key channels,
  while Hugging Face's checkpoints pair channel i with i + head_dim/2 (``rotate_half``). The rows of
  q and k are reordered per head so that both rotate the same pairs (llama.cpp's converter does the
  same). Qwen2's llama.cpp architecture rotates halves, as Hugging Face does: nothing to reorder.
- GPT-2: its ``Conv1D`` weights are stored (in, out); GGUF wants (out, in) like a Linear.

Anything else is refused with the reason, before a file is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gguf
import torch

from .errors import ExportError


def _rope(config) -> tuple[float, str]:
    """(rope theta, rope type) from transformers 5's ``rope_parameters`` or 4's ``rope_theta``/``rope_scaling``."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), kind


def head_width(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _llama_family_problems(config) -> list[str]:
    problems = []
    if (kind := _rope(config)[1]) != "default":
        problems.append(f"rope scaling {kind!r} is not written by trimtune's GGUF export (only unscaled rope)")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"llama.cpp's {config.model_type} FFN is SwiGLU with silu; this model uses {config.hidden_act!r}")
    if head_width(config) % 2:
        problems.append(f"rope needs an even head width, this model's is {head_width(config)}")
    return problems


def _llama_family_settings(config, writer: gguf.GGUFWriter) -> None:
    width = head_width(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(width)  # stated, not derived: a shrunk model's head width is not hidden / heads
    writer.add_value_length(width)
    writer.add_rope_dimension_count(width)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _pair_rotary_channels(name: str, tensor: torch.Tensor, config) -> torch.Tensor:
    """Per head, rows [a0..a(d/2-1), b0..b(d/2-1)] -> [a0, b0, a1, b1, ...] for q and k (weights and biases)."""
    if not name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
        return tensor
    width = head_width(config)
    heads = tensor.shape[0] // width
    return tensor.reshape(heads, 2, width // 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)


def _gpt2_problems(config) -> list[str]:
    problems = []
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"llama.cpp's gpt2 uses the tanh GELU; this model uses {config.activation_function!r}")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) or getattr(config, "reorder_and_upcast_attn", False):
        problems.append("llama.cpp's gpt2 does not scale attention by the layer index")
    return problems


def _gpt2_settings(config, writer: gguf.GGUFWriter) -> None:
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_vocab_size(config.vocab_size)


def _linear_layout(name: str, tensor: torch.Tensor, config) -> torch.Tensor:
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return tensor.t() if name.endswith(conv1d) else tensor


@dataclass(frozen=True)
class GgufArchitecture:
    arch: gguf.MODEL_ARCH
    problems: Callable[[object], list[str]]  # why this config cannot be written (empty: it can)
    settings: Callable[[object, gguf.GGUFWriter], None]  # the hyperparameters llama.cpp reads
    tensor: Callable[[str, torch.Tensor, object], torch.Tensor]  # Hugging Face layout -> GGUF layout

    @property
    def name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


_LLAMA = GgufArchitecture(gguf.MODEL_ARCH.LLAMA, _llama_family_problems, _llama_family_settings, _pair_rotary_channels)

GGUF_ARCHITECTURES: dict[str, GgufArchitecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,  # llama.cpp runs Mistral as llama (its sliding window is not used, as in llama.cpp's converter)
    "qwen2": GgufArchitecture(gguf.MODEL_ARCH.QWEN2, _llama_family_problems, _llama_family_settings, lambda n, t, c: t),
    "gpt2": GgufArchitecture(gguf.MODEL_ARCH.GPT2, _gpt2_problems, _gpt2_settings, _linear_layout),
}

_ELSEWHERE = {  # model types trimtune knows that GGUF cannot carry as they are, and what to do instead
    "bert": "an encoder: llama.cpp runs BERT only as an embedding model, without a classification head; use --format onnx",
    "roberta": "an encoder: llama.cpp runs it only as an embedding model, without a classification head; use --format onnx",
    "distilbert": "an encoder with no llama.cpp architecture; use --format onnx",
}


def architecture_for_config(config) -> GgufArchitecture:
    """The GGUF description of a Hugging Face config (read before any weight is loaded), or an ExportError
    naming why it has none."""
    kind = getattr(config, "model_type", None)
    if kind not in GGUF_ARCHITECTURES:
        reason = _ELSEWHERE.get(kind, "trimtune's GGUF export does not know it")
        raise ExportError(f"model type {kind!r} cannot be exported to GGUF: {reason} "
                          f"(GGUF export knows: {', '.join(GGUF_ARCHITECTURES)})")
    heads = [name for name in getattr(config, "architectures", None) or [] if not name.endswith(("ForCausalLM", "LMHeadModel"))]
    if heads:  # e.g. LlamaForSequenceClassification: loaded as a causal LM, its lm_head would be random
        raise ExportError(f"the model is a {heads[0]}, not a causal LM: llama.cpp's {kind} predicts tokens, so its head "
                          "has no place in a GGUF file; use --format onnx")
    architecture = GGUF_ARCHITECTURES[kind]
    if problems := architecture.problems(config):
        raise ExportError(f"this {kind} model cannot be exported to GGUF: {'; '.join(problems)}")
    return architecture


def gguf_architecture(model) -> GgufArchitecture:
    """The GGUF description of a model in memory: its config's, and it must be a causal LM."""
    if getattr(model, "config", None) is None:
        raise ExportError(f"{type(model).__name__} is not a Hugging Face model (no config); GGUF holds causal language "
                          "models; export other models with --format onnx")
    architecture = architecture_for_config(model.config)
    if not hasattr(model, "lm_head"):
        raise ExportError(f"{type(model).__name__} is not a causal LM (no lm_head): llama.cpp's {architecture.name} predicts "
                          "tokens, so a classification head has no place in its GGUF file; use --format onnx")
    return architecture
