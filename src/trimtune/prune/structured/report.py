"""What a structured shrink removed: per block the heads and FFN channels it lost, the blocks that
went, the hidden channels that went everywhere, and the model's sizes before and after."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from torch import nn


from .config import StructuredConfig

_SHAPE_KEYS = ("num_hidden_layers", "n_layer", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "n_inner")


def _shape(config) -> dict:
    return {k: getattr(config, k) for k in _SHAPE_KEYS if getattr(config, k, None) is not None}


def parameter_count(config) -> dict:
    """Parameters of the causal LM a config describes (built on the meta device: no memory),
    with and without the embeddings (and an untied head)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # a tied head shares the embedding's tensor: count it once
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings()
    outer = {id(p): p.numel() for m in (embeddings, model.get_output_embeddings()) if m is not None for p in m.parameters()}
    for name, p in model.named_parameters():
        if name.endswith("wpe.weight"):
            outer[id(p)] = p.numel()
    matrices = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
                   for p in [m.weight])
    # a generated token costs one multiply-add per weight of every projection and of the head (the
    # embedding is a lookup; attention over the context grows with its length and is left out)
    return {"total": total, "non_embedding": total - sum(outer.values()), "macs_per_token": matrices}


@dataclass
class StructuredReport:
    config: dict
    before: dict
    after: dict
    blocks: list[dict]
    dropped_blocks: list[int]
    hidden_removed: list[int] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    parameters_before: dict = field(default_factory=dict)
    parameters_after: dict = field(default_factory=dict)
    file_bytes: dict = field(default_factory=dict)  # {"before", "after"}: the weight files (streamed runs)
    speed: dict = field(default_factory=dict)  # {"dense", "shrunk"}: prefill / decode tokens per second, if measured

    @classmethod
    def build(cls, config: StructuredConfig, old, new, changes, dropped, hidden_keep, scores) -> "StructuredReport":
        hidden_removed = []
        if hidden_keep is not None:
            keep = set(hidden_keep.tolist())
            hidden_removed = [c for c in range(old.hidden_size) if c not in keep]
        return cls(asdict(config), _shape(old), _shape(new), changes, dropped, hidden_removed, scores,
                   parameter_count(old), parameter_count(new))

    @property
    def removed_fraction(self) -> float:
        """Share of the non-embedding parameters removed."""
        return 1 - self.parameters_after["non_embedding"] / self.parameters_before["non_embedding"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        lines = [f"{'block':>5} {'-> new':>6} {'heads removed':<20} {'kv removed':<12} {'ffn removed':>11}"]
        for change in self.blocks:
            lines.append(f"{change['block']:>5} {change['new_index']:>6} {str(change.get('heads_removed', [])):<20} "
                         f"{str(change.get('kv_heads_removed', [])):<12} {len(change.get('ffn_removed', [])):>11}")
        if self.dropped_blocks:
            lines.append(f"blocks removed: {self.dropped_blocks}")
        if self.hidden_removed:
            lines.append(f"hidden channels removed: {len(self.hidden_removed)} of {self.before.get('hidden_size')}")
        lines.append(f"shape: {self.before} -> {self.after}")
        p0, p1 = self.parameters_before, self.parameters_after
        lines.append(f"parameters: {p0['total']:,} -> {p1['total']:,}; non-embedding {p0['non_embedding']:,} -> "
                     f"{p1['non_embedding']:,} ({100 * self.removed_fraction:.1f} % removed)")
        lines.append(f"MACs per token: {p0['macs_per_token']:,} -> {p1['macs_per_token']:,}")
        if self.file_bytes:
            lines.append(f"weight files: {self.file_bytes['before']:,} -> {self.file_bytes['after']:,} bytes")
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            if self.speed:
                lines.append(f"{key}: {self.speed['dense'][key]:.1f} -> {self.speed['shrunk'][key]:.1f}")
        return "\n".join(lines)


