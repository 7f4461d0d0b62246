"""What a recipe run does for a method beyond the library's verbs, by method name: the one table of
recipe-only method concerns (the library's methods know nothing of run directories).

- ``artifact``: the run directory's sub-folder for the method's files (``adapter``, or ``diff``);
- ``prepare_base(model, config)``: what the rebuilt base needs before the run's file loads onto it
  (QLoRA quantises it to 4 bits: the adapter was trained and fingerprinted on that base);
- ``finish(model, name, config) -> (summary entries, log line)``: after training, before saving
  (diff projects to its exact density);
- ``run_files(model, name, config) -> {file name: JSON-able}``: extra records in the run directory
  (AdaLoRA's final ranks);
- ``virtual_tokens``: the method puts trained tokens in front of every row (prompt, P- and prefix
  tuning), so instruction data is neither packed nor cut to its loss positions.

A method with none of these needs no line here. ``API_ONLY`` names the methods a recipe's
``method.type`` cannot name (the learned L0 gates are a pruning tool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trimtune as tt


@dataclass(frozen=True)
class MethodRun:
    artifact: str = "adapter"
    prepare_base: Callable | None = None
    finish: Callable | None = None
    run_files: Callable | None = None
    virtual_tokens: bool = False


def _project_diff(model, name, config) -> tuple[dict, str]:
    kept = tt.project_diffs(model, name)  # to the exact density the artifact stores
    return {"diff": kept}, f"diff projected to {kept['kept']:,} of {kept['total']:,} entries"


METHOD_RUNS: dict[str, MethodRun] = {
    "diff": MethodRun(artifact="diff", finish=_project_diff),
    "adalora": MethodRun(run_files=lambda model, name, config: {"adalora_ranks.json": tt.adalora_ranks(model, name)}),
    "qlora": MethodRun(prepare_base=lambda model, config: tt.quantize_base(model, config.quantize, config.quant)),
    "prompt": MethodRun(virtual_tokens=True),
    "p-tuning": MethodRun(virtual_tokens=True),
    "prefix": MethodRun(virtual_tokens=True),
}
API_ONLY = {"gates"}


def method_run(config) -> MethodRun:
    """The run-directory concerns of the method ``config`` belongs to (the defaults for most)."""
    return METHOD_RUNS.get(tt.method_for_config(config).name, MethodRun())


def adds_virtual_tokens(method_type: str) -> bool:
    """Whether the recipe's ``method.type`` puts trained tokens in front of every row."""
    return METHOD_RUNS.get(method_type, MethodRun()).virtual_tokens


def recipe_methods() -> dict[str, type]:
    """{recipe method.type: config class} for every method a recipe can name."""
    return {name: method.config for name, method in tt.registered_methods().items() if name not in API_ONLY}
