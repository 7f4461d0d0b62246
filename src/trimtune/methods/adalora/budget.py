"""AdaLoRA's training-time side: orthogonality penalty, sensitivity scores, budget schedule, rank masks.

``RankAllocator`` follows peft's ``RankAllocator`` step for step (same scores, same schedule, same
threshold), so a run gives the same masks. It is a ``trimtune.train`` callback that the loop runs
automatically (``apply`` registers it in the model's state), so forgetting the update — which in
peft silently leaves plain LoRA — cannot happen there. A hand-written loop calls
``adalora_update(model, step)`` after ``optimizer.step()`` and before ``zero_grad()``; if ten
training forwards pass without that call, a warning says so.

The orthogonality penalty is added to ``outputs.loss`` by a forward hook on the model in training
mode, as peft's ``AdaLoraModel.forward`` does, so it applies in any loop.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ...core.config import ConfigError
from ...core.io.gather import full, whole
from ...core.state import layers, state_of
from .delta import AdaLoraConfig, AdaLoraDelta

log = logging.getLogger(__name__)
WARN_AFTER_FORWARDS = 10


def adalora_deltas(model: nn.Module, name: str) -> list[tuple[str, AdaLoraDelta]]:
    named = ((n, layer.deltas[name]) for n, layer in layers(model) if name in layer.deltas)
    return [(n, delta) for n, delta in named if isinstance(delta, AdaLoraDelta)]


def orthogonality_penalty(deltas: list[AdaLoraDelta]) -> torch.Tensor:
    """Mean over all P and Q of ``||Q Q^T - I||_F`` and ``||P^T P - I||_F`` (peft's regulariser)."""
    terms = []
    for delta in deltas:
        a, b = full(delta.lora_A), full(delta.lora_B)  # sharded (FSDP): gathered, gradient kept
        for cov in (a @ a.T, b.T @ b):
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)))
    return torch.stack(terms).mean()


class RankAllocator:
    """Moves AdaLoRA's rank budget between the layers of adapter ``name`` during training."""
    def __init__(self, model: nn.Module, config: AdaLoraConfig, name: str):
        self.config = config
        self.name = name
        self.updates = 0
        self.training_forwards = 0
        deltas = [d for _, d in adalora_deltas(model, name)]
        self.init_budget = sum(d.lora_E.shape[0] for d in deltas)
        self.target_budget = config.target_r * len(deltas)
        if not getattr(model, "_trimtune_adalora_hook", False):
            model.register_forward_hook(_add_penalty_and_check)
            object.__setattr__(model, "_trimtune_adalora_hook", True)

    # ---- trimtune.train callback hooks ----
    def on_train_start(self, ctx) -> None:
        if self.config.total_step is None:
            if ctx.total_steps is None:
                raise ConfigError("AdaLoRA needs total_step: set it in AdaLoraConfig (the data has no length to count steps from)")
            self.config.check_schedule(ctx.total_steps)  # before it is kept: a refused run leaves the config as it was
            self.config.total_step = ctx.total_steps  # kept in the config: the adapter file records it
        self.config.check_schedule(self.config.total_step)

    def after_optimizer_step(self, ctx) -> None:
        self.update_and_allocate(ctx.model, ctx.step)

    def on_train_end(self, ctx, result) -> None:
        log.info("AdaLoRA %r final ranks: %s", self.name, adalora_ranks(ctx.model, self.name))

    # ---- the schedule ----
    def budget(self, step: int) -> tuple[int, bool]:
        """(total rank budget at ``step``, whether to re-mask now): peft's cubic schedule."""
        c = self.config
        if step <= c.tinit:
            return self.init_budget, False
        if step > self.config.total_step - c.tfinal:
            return self.target_budget, True
        remaining = 1 - (step - c.tinit) / (self.config.total_step - c.tfinal - c.tinit)
        budget = int((self.init_budget - self.target_budget) * remaining**3 + self.target_budget)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_and_allocate(self, model: nn.Module, step: int) -> int:
        """One training step's update (call with gradients present). Returns the current budget."""
        if self.config.total_step is None:
            raise ConfigError("AdaLoRA needs total_step: set it in AdaLoraConfig, or train with trimtune.train which counts the steps")
        self.updates += 1
        named = adalora_deltas(model, self.name)
        end = self.config.total_step - self.config.tfinal
        if step < end:
            for _, delta in named:
                self._update_sensitivity(delta)
            budget, mask_now = self.budget(step)
            if mask_now:
                self._mask_to_budget(named, budget)
            return budget
        if step == end:  # the final allocation; the ranks stay fixed afterwards
            self._mask_to_budget(named, self.target_budget)
            for _, delta in named:
                delta.sensitivity = {}
        else:
            for _, delta in named:
                if delta.rank_mask is not None:
                    delta.apply_rank_mask(delta.rank_mask)
        return self.target_budget

    def _update_sensitivity(self, delta: AdaLoraDelta) -> None:
        beta1, beta2 = self.config.beta1, self.config.beta2
        for key, param in delta.factors().items():
            if param.grad is None:
                raise RuntimeError(
                    "adalora_update needs the gradients of this step: call it after loss.backward() and optimizer.step(), "
                    "before optimizer.zero_grad()"
                )
            ipt = (param * param.grad).abs()
            avg, unc = delta.sensitivity.get(key, (torch.zeros_like(param), torch.zeros_like(param)))
            avg = beta1 * avg + (1 - beta1) * ipt
            unc = beta2 * unc + (1 - beta2) * (ipt - avg).abs()
            delta.sensitivity[key] = (avg, unc)

    def _triplet_scores(self, delta: AdaLoraDelta) -> torch.Tensor:
        """One score per singular triplet: λ's score + mean score of its row of Q + of its column of P."""
        # Sharded factors (FSDP) give sharded scores: gathered, every rank sees all of them, so all
        # ranks pick the same threshold and the same rank pattern as one process would.
        score = {k: whole(avg * unc) for k, (avg, unc) in delta.sensitivity.items()}
        return score["lora_E"].view(-1) + score["lora_A"].mean(dim=1) + score["lora_B"].mean(dim=0)

    def _mask_to_budget(self, named: list[tuple[str, AdaLoraDelta]], budget: int) -> None:
        if budget >= self.init_budget or any(not d.sensitivity for _, d in named):
            return  # nothing to remove (or no statistics yet)
        scores = [self._triplet_scores(d) for _, d in named]
        threshold = torch.kthvalue(torch.cat(scores), k=self.init_budget - budget).values.item()
        pattern = {}
        for (layer_name, delta), score in zip(named, scores):
            delta.apply_rank_mask(score > threshold)
            pattern[layer_name] = delta.rank_mask.tolist()
        self.config.rank_pattern = pattern


def allocators(model: nn.Module, name: str | None = None) -> list[RankAllocator]:
    found = [cb for n, cb in state_of(model).callbacks.items() if isinstance(cb, RankAllocator) and name in (None, n)]
    if not found:
        raise ValueError(f"the model has no AdaLoRA adapter{'' if name is None else f' named {name!r}'}")
    return found


def adalora_update(model: nn.Module, step: int, name: str | None = None) -> None:
    """The hook for a hand-written loop: call once per optimizer step, after ``optimizer.step()``
    and before ``zero_grad()`` (``trimtune.train`` does this by itself)."""
    for allocator in allocators(model, name):
        allocator.update_and_allocate(model, step)


def adalora_ranks(model: nn.Module, name: str | None = None) -> dict[str, int]:
    """Current rank (unmasked triplets) per layer of the AdaLoRA adapter ``name`` (default: the only one)."""
    allocator = allocators(model, name)[0]
    return {layer_name: delta.rank() for layer_name, delta in adalora_deltas(model, allocator.name)}


def _add_penalty_and_check(model, args, output):
    if not model.training:
        return output

    state = state_of(model)
    for name, allocator in state.callbacks.items():
        if not isinstance(allocator, RankAllocator) or name not in state.active:
            continue
        allocator.training_forwards += 1
        if allocator.updates == 0 and allocator.training_forwards == WARN_AFTER_FORWARDS:
            warnings.warn(
                f"AdaLoRA adapter {name!r}: {WARN_AFTER_FORWARDS} training forwards and the rank update was never called, "
                "so no rank is being reallocated (this is plain LoRA). Train with trimtune.train, or call "
                "trimtune.adalora_update(model, step) after each optimizer.step()",
                stacklevel=2,
            )
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and allocator.config.orth_reg_weight > 0:
            deltas = [d for _, d in adalora_deltas(model, name)]
            output.loss = loss + allocator.config.orth_reg_weight * orthogonality_penalty(deltas)
    return output
