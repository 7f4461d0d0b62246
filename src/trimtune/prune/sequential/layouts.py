"""Where a model keeps its transformer blocks, resolved against one model from the architecture
table (``core/architectures.py``: ``blocks``, ``embeddings``, ``final_norm``, ``rotary``).

The table's paths are relative to the *base* model (``model.base_model``: ``LlamaModel`` inside
``LlamaForCausalLM``, ``BertModel`` inside ``BertForSequenceClassification``), so one entry serves
every head class; here they become full dotted names from the model's root.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...core.architectures import architecture, model_types


class UnknownLayoutError(ValueError):
    """The pipeline does not know where this model type keeps its blocks."""


def sequential_types() -> list[str]:
    """Model types the sequential pipeline can walk: blocks and embeddings are in the table."""
    return model_types(lambda arch: arch.blocks and arch.embeddings)


@dataclass(frozen=True)
class BlockLayout:
    model_type: str
    blocks: str
    embed: tuple[str, ...]
    norm: str | None
    rotary: str | None

    def block_name(self, index: int) -> str:
        return f"{self.blocks}.{index}"


def _base_prefix(model: nn.Module, blocks: str) -> str:
    """The dotted prefix of the base model that holds ``blocks``: ``model.base_model`` for a Hugging
    Face head class, else the first module (the root, then its submodules in order) where the path
    resolves (a user's own wrapper such as ``self.encoder = AutoModel...``)."""
    base = getattr(model, "base_model", None)
    named = sorted(model.named_modules(), key=lambda item: item[1] is not base)  # stable: base first, then module order
    for name, module in named:
        try:
            module.get_submodule(blocks)
        except AttributeError:
            continue
        return f"{name}." if name else ""
    raise UnknownLayoutError(
        f"{type(model).__name__} has no submodule {blocks!r} (where its model type keeps the transformer blocks), "
        "neither at its root, under base_model, nor in any submodule"
    )


def model_type_of(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in sequential_types():
        raise UnknownLayoutError(
            f"the sequential pipeline does not know the block layout of model_type {model_type!r} "
            f"(config.model_type); known types: {', '.join(sequential_types())}"
        )
    return model_type


def layout_of(model: nn.Module) -> BlockLayout:
    model_type = model_type_of(getattr(model, "config", None))
    arch = architecture(model_type)
    prefix = _base_prefix(model, arch.blocks)

    def full(path):
        return f"{prefix}{path}" if path else None

    return BlockLayout(model_type, full(arch.blocks), tuple(full(p) for p in arch.embeddings), full(arch.final_norm), full(arch.rotary))


def blocks_of(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    return model.get_submodule(layout.blocks)
