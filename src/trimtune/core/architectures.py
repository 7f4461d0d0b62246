"""The one table of model architectures: what trimtune knows about each Hugging Face model type.

Keyed by ``config.model_type``. For each: where the transformer blocks are and what a block holds
(attention projections q/k/v/o or a fused qkv, the FFN's up/gate and down projections, the block's
class), and each method's default targets (peft's choices, so files stay compatible). Targets, IA3,
bottleneck adapters, head pruning, shrinking and the block-by-block pipelines all read it; add a model
type here once and every method knows it.

Names are dotted suffixes: block parts are relative to one block, targets match a module name's end.
``architecture(of)`` is the one reader of an entry and ``model_types(where)`` the one list of the
known types; the attention heads of a block are counted from an entry in ``attention_heads.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

_BERT_FFN_OUT = r"layer\.\d+\.output\.dense"  # BERT's FFN output; the bare name also matches attention.output.dense


@dataclass(frozen=True)
class Architecture:
    # The block layout (None where trimtune does not walk this model type's blocks).
    blocks: str | None = None  # the ModuleList of transformer blocks
    block_class: str | None = None  # class name of one block (the unit for sharding and block-wise pruning)
    attention: str | None = None  # the attention container inside a block
    q: str | None = None  # projections inside a block
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # a fused q/k/v projection (GPT-2's Conv1D c_attn)
    o: str | None = None
    ffn_up: tuple[str, ...] = ()  # up (and gate) projections: their outputs are the FFN units
    ffn_down: str | None = None
    attn_norm: str | None = None  # the norm whose output feeds attention (pre-norm decoders)
    ffn_norm: str | None = None  # the norm whose output feeds the FFN
    grouped_query_config: bool = False  # the config states num_key_value_heads and head_dim (Llama family)
    # Around the blocks, relative to the base model (``model.base_model``), for block-by-block pruning:
    embeddings: tuple[str, ...] = ()  # the modules that run before block 0 (made real to capture its inputs)
    final_norm: str | None = None  # the norm after the last block
    rotary: str | None = None  # the shared rotary-embedding module (buffers computed, not loaded)
    # Default targets per method (peft's TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING choices).
    lora: tuple[str, ...] = ()
    ia3: tuple[str, ...] = ()
    ia3_feedforward: tuple[str, ...] = ()  # the IA3 targets whose input (not output) is scaled
    houlsby: object = None  # bottleneck adapters after attention and FFN outputs
    pfeiffer: object = None  # bottleneck adapters after the FFN output only
    extra: dict = field(default_factory=dict)

    @property
    def has_blocks(self) -> bool:
        return self.blocks is not None


_BERT = Architecture(
    blocks="encoder.layer", block_class="BertLayer", attention="attention",
    q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
    ffn_up=("intermediate.dense",), ffn_down="output.dense", embeddings=("embeddings",),
    lora=("query", "value"), ia3=("key", "value", "output.dense"), ia3_feedforward=("output.dense",),
    houlsby=rf"attention\.output\.dense|{_BERT_FFN_OUT}", pfeiffer=_BERT_FFN_OUT,
)
_LLAMA = Architecture(
    blocks="layers", block_class="LlamaDecoderLayer", attention="self_attn",
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    ffn_up=("mlp.gate_proj", "mlp.up_proj"), ffn_down="mlp.down_proj", grouped_query_config=True,
    attn_norm="input_layernorm", ffn_norm="post_attention_layernorm",
    embeddings=("embed_tokens",), final_norm="norm", rotary="rotary_emb",
    lora=("q_proj", "v_proj"), ia3=("k_proj", "v_proj", "down_proj"), ia3_feedforward=("down_proj",),
    houlsby=["o_proj", "down_proj"], pfeiffer=["down_proj"],
)

_TABLE: dict[str, Architecture] = {
    "bert": _BERT,
    "roberta": Architecture(**{**vars(_BERT), "block_class": "RobertaLayer"}),
    "llama": _LLAMA,
    "mistral": Architecture(**{**vars(_LLAMA), "block_class": "MistralDecoderLayer"}),
    "qwen2": Architecture(**{**vars(_LLAMA), "block_class": "Qwen2DecoderLayer", "ia3": ("q_proj", "v_proj", "down_proj")}),
    "gemma": Architecture(lora=("q_proj", "v_proj"), ia3=("q_proj", "v_proj", "down_proj"), ia3_feedforward=("down_proj",),
                          houlsby=["o_proj", "down_proj"], pfeiffer=["down_proj"]),
    "gpt2": Architecture(
        blocks="h", block_class="GPT2Block", attention="attn", qkv="attn.c_attn", o="attn.c_proj",
        ffn_up=("mlp.c_fc",), ffn_down="mlp.c_proj", embeddings=("wte", "wpe"), final_norm="ln_f", attn_norm="ln_1", ffn_norm="ln_2",
        lora=("c_attn",), ia3=("c_attn", "mlp.c_proj"), ia3_feedforward=("mlp.c_proj",),
        houlsby=["attn.c_proj", "mlp.c_proj"], pfeiffer=["mlp.c_proj"],
    ),
    "opt": Architecture(lora=("q_proj", "v_proj"), ia3=("q_proj", "k_proj", "fc2"), ia3_feedforward=("fc2",),
                        houlsby=["out_proj", "fc2"], pfeiffer=["fc2"]),
    "distilbert": Architecture(lora=("q_lin", "v_lin")),
    "gpt_neox": Architecture(lora=("query_key_value",), ia3=("query_key_value", "dense_4h_to_h"), ia3_feedforward=("dense_4h_to_h",)),
}


def model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def architecture(of) -> Architecture | None:
    """The table's entry for ``of``: a model (by its ``config.model_type``), a Hugging Face config, or a
    model type name; None for a type the table does not know."""
    if isinstance(of, nn.Module):
        of = model_type(of)
    elif of is not None and not isinstance(of, str):
        of = getattr(of, "model_type", None)
    return _TABLE.get(of)


def model_types(where=lambda arch: True) -> list[str]:
    """The known model types whose entry satisfies ``where`` (for error messages: what is supported)."""
    return sorted(t for t, arch in _TABLE.items() if where(arch))


def defaults(field_name: str) -> dict[str, object]:
    """{model type: default} for one per-method field of the table (e.g. ``"lora"``, ``"houlsby"``)."""
    values = {t: getattr(architecture(t), field_name) for t in model_types(lambda arch: getattr(arch, field_name))}
    return {t: list(v) if isinstance(v, tuple) else v for t, v in values.items()}


def with_blocks() -> list[str]:
    """The model types whose block layout is known (shrinking, head pruning, block-wise pipelines)."""
    return model_types(lambda arch: arch.has_blocks)


def block_list(model: nn.Module, arch: Architecture | None = None) -> tuple[str, nn.ModuleList]:
    """(dotted name, module list) of the model's transformer blocks."""
    arch = arch or architecture(model)
    if arch is None or not arch.has_blocks:
        raise ValueError(
            f"trimtune does not know the block layout of model type {model_type(model)!r} "
            f"({type(model).__name__}); known: {', '.join(with_blocks())}"
        )
    for name, module in model.named_modules():
        if (name == arch.blocks or name.endswith("." + arch.blocks)) and isinstance(module, nn.ModuleList):
            return name, module
    raise ValueError(f"cannot find the block list {arch.blocks!r} in {type(model).__name__}")


def head_dim(attention: nn.Module) -> int:
    """Width of one head, from the attention module (the names differ across transformers' classes)."""
    for attr in ("head_dim", "attention_head_size"):
        if getattr(attention, attr, None):
            return int(getattr(attention, attr))
    raise ValueError(f"{type(attention).__name__} has no head_dim / attention_head_size")
