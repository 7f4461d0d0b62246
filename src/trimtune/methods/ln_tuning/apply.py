"""Adding an LN tuning adapter: a trained copy of every targeted norm module, next to the original."""

from __future__ import annotations

from torch import nn

from ...core.adapters import add_head_copies, all_or_nothing
from ...core.state import replace_module
from ...core.targets import TargetError, candidate_modules, to_predicate
from .config import LNTuningConfig
from .copies import NormCopies


def norm_targets(model: nn.Module, config: LNTuningConfig) -> list[str]:
    """Names of the modules ``config.targets`` selects; each must be a norm: one module with parameters and
    no submodules (a container such as a whole MLP or block is refused, not copied)."""
    predicate = to_predicate(config.targets, model, config.default_targets)
    chosen = [(name, module) for name, module in candidate_modules(model)
              if predicate(name, module) and not isinstance(module, NormCopies)]
    chosen += [(name, module) for name, module in model.named_modules() if isinstance(module, NormCopies)
               and predicate(name, module.original)]  # a norm another LN adapter already copies
    if not chosen:
        raise TargetError(f"LN tuning targets matched no module ({config.targets!r}); name the normalisation "
                          "modules (e.g. ['input_layernorm', 'norm'] or 'LayerNorm')")
    for name, module in chosen:
        inner = module.original if isinstance(module, NormCopies) else module
        if not list(inner.parameters()) or list(inner.children()):
            raise TargetError(f"LN tuning target {name} ({type(inner).__name__}) is not a normalisation layer (one module "
                              "with its own scale/shift and no submodules); narrow targets to the norms")
    return [name for name, _ in chosen]


def apply_ln_tuning(model: nn.Module, config: LNTuningConfig, name: str) -> None:
    targets = norm_targets(model, config)  # all checked before the model changes
    with all_or_nothing(model, name):
        for target in targets:
            module = model.get_submodule(target)
            if not isinstance(module, NormCopies):
                module = NormCopies(module).train(module.training)
                replace_module(model, target, module)
            module.add_copy(name)
        add_head_copies(model, name, config.modules_to_save)
