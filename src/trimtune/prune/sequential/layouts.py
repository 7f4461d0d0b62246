"""Where a model keeps its transformer blocks: the one table the sequential pipeline reads.

Paths are relative to the *base* model (``model.base_model``: ``LlamaModel`` inside
``LlamaForCausalLM``, ``BertModel`` inside ``BertForSequenceClassification``), so one entry serves
every head class. ``embed``: modules that run before block 0 (the streaming loader makes only these
real to capture block 0's inputs); ``norm``: the final norm after the last block (None for BERT);
``rotary``: the shared rotary-embedding module, if any (its buffers are computed, not loaded).
Meant to be folded into the architecture table once it exists (issue #14).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

_LLAMA = {"blocks": "layers", "embed": ("embed_tokens",), "norm": "norm", "rotary": "rotary_emb"}

BLOCK_LAYOUTS: dict[str, dict] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": {"blocks": "h", "embed": ("wte", "wpe"), "norm": "ln_f", "rotary": None},
    "bert": {"blocks": "encoder.layer", "embed": ("embeddings",), "norm": None, "rotary": None},
}


class UnknownLayoutError(ValueError):
    """The pipeline does not know where this model type keeps its blocks."""


@dataclass(frozen=True)
class BlockLayout:
    """A layout resolved against one model: full dotted names from the model's root."""

    model_type: str
    blocks: str
    embed: tuple[str, ...]
    norm: str | None
    rotary: str | None

    def block_name(self, index: int) -> str:
        return f"{self.blocks}.{index}"


def _base_prefix(model: nn.Module) -> str:
    base = getattr(model, "base_model", model)
    if base is model:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}."
    raise UnknownLayoutError(f"{type(model).__name__}.base_model is not one of its submodules")


def model_type_of(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in BLOCK_LAYOUTS:
        raise UnknownLayoutError(
            f"the sequential pipeline does not know the block layout of model_type {model_type!r} "
            f"(config.model_type); known types: {', '.join(sorted(BLOCK_LAYOUTS))}"
        )
    return model_type


def layout_of(model: nn.Module) -> BlockLayout:
    model_type = model_type_of(getattr(model, "config", None))
    entry = BLOCK_LAYOUTS[model_type]
    prefix = _base_prefix(model)
    full = lambda path: f"{prefix}{path}" if path else None  # noqa: E731
    return BlockLayout(model_type, full(entry["blocks"]), tuple(full(p) for p in entry["embed"]), full(entry["norm"]), full(entry["rotary"]))


def blocks_of(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    return model.get_submodule(layout.blocks)
