"""Knowledge distillation for recovery: a frozen teacher (the model before it was pruned or shrunk)
teaches the student being tuned.

The loss of every micro-batch becomes

    (1 − α) · task  +  α · T² · KL(softmax(teacher / T) ‖ softmax(student / T))  +  β · mean_l MSE(map_l(s_l), t_l)

With ``augment`` > 0 the KL is the mean over the batch and ``augment_copies`` perturbed copies of it
(a share of the tokens swapped, ``token_swap``): the teacher labels the copies, which carry no task
label, so a small labelled set becomes a larger transfer set (TinyBERT's data augmentation). On the
training examples themselves a teacher tuned on them is near one-hot and teaches little beyond the
labels; on perturbed text its soft outputs are informative. Each copy costs a student forward and
backward and a teacher forward (copies are never cached).

The T² keeps the soft term's gradient on the task loss's scale whatever the temperature (Hinton et
al. 2015). The last term is optional hidden-state distillation between chosen student and teacher
modules; when a shrink changed a module's width, a learned linear map takes the student's states to
the teacher's width (CoFi). The loop adds ``loss_term`` to the task loss, so the callback returns
``α · (T²·KL − task) + β · MSE``.

The teacher runs under ``no_grad`` in eval mode: none of its activations are kept for backward and it
never changes. Under DDP every process holds its own teacher (it is not wrapped). The maps are the
callback's own parameters, not the student's (so saved models and adapters never hold them, and a
container model such as ``nn.Sequential`` gets no extra child): ``trainable_parameters()`` hands them
to ``train``'s default optimizer (a caller's own optimizer must include ``distiller.maps``; training
refuses to start otherwise), and under DDP their gradients are averaged across processes before each
optimizer step, as DDP does for the student's. They are not clipped with the student's gradients.
Checkpoints hold them (``TrainContext.callback_parameters``), so a resumed run continues with the
trained maps; the teacher-logit cache is not saved (a resumed run asks the teacher again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ConfigError, check_fraction, check_positive
from .batches import BatchOutput, run_batch, to_device
from .callbacks import Callback, TrainContext
from .distributed import unwrap_model
from .evaluate import model_device
from .token_swap import perturbed_copy, token_inputs


@dataclass
class DistillConfig:
    """alpha: weight of the soft (teacher) loss against the task loss, in [0, 1]. temperature: T > 0
    softening both distributions. hidden_layers: module names whose outputs are matched by MSE, each a
    name present in both models or a (student_name, teacher_name) pair. hidden_weight: β, the weight
    of their mean MSE. cache_teacher: keep the teacher's logits per example (keyed by the example's
    unpadded inputs) and reuse them when the example comes again, e.g. in the next epoch; the teacher is
    frozen and in eval mode, so they would come out the same. Only for per-example logits
    (classification) and logit distillation: hidden states change with every student step's needs.
    augment: share of each example's tokens swapped in the perturbed copies the teacher labels, in
    [0, 1); 0 (the default) makes no copies. augment_copies: copies per micro-batch. Token-id inputs
    only; the copies are matched on logits, not hidden states."""

    alpha: float = 0.5
    temperature: float = 2.0
    hidden_layers: Sequence[str | Sequence[str]] = field(default_factory=tuple)
    hidden_weight: float = 1.0
    cache_teacher: bool = True
    augment: float = 0.0
    augment_copies: int = 1

    def __post_init__(self):
        check_fraction("alpha", self.alpha, closed_right=True)
        check_positive("temperature", self.temperature)
        if isinstance(self.hidden_weight, bool) or not isinstance(self.hidden_weight, (int, float)) or self.hidden_weight < 0:
            raise ConfigError(f"hidden_weight must be a number >= 0, got {self.hidden_weight!r}")
        if not isinstance(self.cache_teacher, bool):
            raise ConfigError(f"cache_teacher must be true or false, got {self.cache_teacher!r}")
        if isinstance(self.augment, bool) or not isinstance(self.augment, (int, float)) or not 0 <= self.augment < 1:
            raise ConfigError(f"augment must be a share of tokens in [0, 1), got {self.augment!r}")
        if isinstance(self.augment_copies, bool) or not isinstance(self.augment_copies, int) or self.augment_copies < 1:
            raise ConfigError(f"augment_copies must be an integer >= 1, got {self.augment_copies!r}")
        if isinstance(self.hidden_layers, str):
            raise ConfigError(f"hidden_layers must be a list of module names, got the string {self.hidden_layers!r}")
        self.hidden_layers = tuple(_layer_pair(entry) for entry in self.hidden_layers)


def _layer_pair(entry) -> tuple[str, str]:
    if isinstance(entry, str) and entry:
        return entry, entry
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(n, str) and n for n in entry):
        return entry[0], entry[1]
    raise ConfigError(f"hidden_layers entries must be a module name or a [student_name, teacher_name] pair, got {entry!r}")


def _check_vocabularies(student: nn.Module, teacher: nn.Module) -> None:
    """Both read the same token ids (and a causal LM's logits are compared entry by entry): a teacher
    with another vocabulary would be fed ids that mean other tokens to it, or fail mid-training."""
    sizes = [getattr(getattr(m, "config", None), "vocab_size", None) for m in (student, teacher)]
    if None not in sizes and sizes[0] != sizes[1]:
        raise ValueError(f"the teacher's vocabulary has {sizes[1]} tokens (config vocab_size), the student's {sizes[0]}: "
                         "distil from a teacher with the student's tokenizer (distill.teacher)")


class Distiller(Callback):
    """The distillation callback for ``train``. ``example_batch`` (one training batch) is needed only
    with ``hidden_layers``: it tells the widths of the chosen modules, so the maps exist before the
    optimizer is made."""

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig | None = None, example_batch=None):
        self.config = config or DistillConfig()
        student = unwrap_model(student)
        if _shares_parameters(student, teacher):
            raise ValueError("the teacher shares parameters with the student; pass a frozen copy (copy.deepcopy(model) before pruning)")
        _check_vocabularies(student, teacher)
        self.teacher = teacher.to(model_device(student)).eval().requires_grad_(False)
        self.student = student
        self._student_states: dict[str, torch.Tensor] = {}
        self._teacher_states: dict[str, torch.Tensor] = {}
        self._pending: tuple | None = None
        self._logits_cache: dict[bytes, torch.Tensor] = {}
        self.teacher_calls = 0  # forward passes the teacher really ran (the cache saves the others)
        self._handles: list = []
        s_modules = _modules(student, [s for s, _ in self.config.hidden_layers], "student")
        t_modules = _modules(teacher, [t for _, t in self.config.hidden_layers], "teacher")
        self._teacher_handles = [m.register_forward_hook(_capture(self._teacher_states, n)) for n, m in t_modules.items()]
        self._s_modules = s_modules
        self.maps = self._make_maps(example_batch) if self.config.hidden_layers else nn.ModuleDict()
        if self.config.augment and example_batch is not None:
            token_inputs(example_batch)  # token-id inputs, or a clear error now

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.maps.parameters())

    # -- hooks -------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        optimized = {id(p) for group in ctx.optimizer.param_groups for p in group["params"]}
        if any(id(p) not in optimized for p in self.maps.parameters()):
            raise ValueError("the optimizer does not train the distillation maps: add distiller.maps.parameters() to it, "
                             "or let train make the optimizer (lr=...)")
        self.teacher.eval()  # a caller's .train() on everything must not turn the teacher's dropout on
        self._handles = [m.register_forward_hook(_capture(self._student_states, n)) for n, m in self._s_modules.items()]

    def on_forward(self, ctx: TrainContext, batch, output: BatchOutput) -> None:
        self._pending = (batch, output)

    def loss_term(self, ctx: TrainContext) -> torch.Tensor | None:
        if self._pending is None:
            return None
        batch, output = self._pending
        self._pending = None  # hold no reference to this batch's graph past its loss
        term = self.distill_term(batch, output)
        self._student_states.clear()
        return term

    def before_optimizer_step(self, ctx: TrainContext) -> None:
        average_across_processes(list(self.maps.parameters()))

    def on_eval(self, ctx: TrainContext, step: int, metrics) -> None:
        self._student_states.clear()  # states captured while evaluating are not for training

    def on_train_end(self, ctx: TrainContext, result) -> None:
        self.detach()

    def detach(self) -> None:
        """Remove the hooks from the student (``train`` does it at the end)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- the loss ----------------------------------------------------------------------------
    def distill_term(self, batch, output: BatchOutput) -> torch.Tensor:
        """α·(T²·KL − task) + β·MSE for one micro-batch whose student output is ``output``."""
        c = self.config
        teacher_logits = self.teacher_forward(batch)
        mask = _token_mask(batch, output.logits)
        kl = soft_kl(output.logits, teacher_logits, c.temperature, mask)
        term = c.hidden_weight * self._hidden_mse(mask) if c.hidden_layers else 0  # before copies overwrite the states
        if c.augment and c.alpha > 0:  # at alpha 0 the copies would weigh nothing: skip their forwards
            kl = (kl + sum(self._copy_kl(batch) for _ in range(c.augment_copies))) / (1 + c.augment_copies)
        term = term + c.alpha * (c.temperature**2 * kl)
        if output.loss is not None:
            term = term - c.alpha * output.loss
        elif c.alpha < 1:
            raise ValueError("distillation with alpha < 1 needs the task loss, but the batch gave none")
        return term

    def _copy_kl(self, batch) -> torch.Tensor:
        """KL on one perturbed copy of the batch: the student learns the teacher's outputs on it."""
        copy = perturbed_copy(batch, self.config.augment)
        teacher_logits = self.teacher_forward(copy, cache=False)
        student_logits = run_batch(self.student, copy).logits
        self._student_states.clear()
        return soft_kl(student_logits, teacher_logits, self.config.temperature, _token_mask(copy, student_logits))

    @torch.no_grad()
    def teacher_forward(self, batch, cache: bool = True) -> torch.Tensor:
        caching = cache and self.config.cache_teacher and not self.config.hidden_layers
        keys = row_keys(batch) if caching else None
        if keys is not None and all(k in self._logits_cache for k in keys):
            return torch.stack([self._logits_cache[k] for k in keys]).to(model_device(self.student))
        self._teacher_states.clear()
        self.teacher_calls += 1
        logits = run_batch(self.teacher, to_device(batch, model_device(self.teacher))).logits.detach()
        if keys is not None and logits.ndim == 2 and len(keys) == logits.shape[0]:
            self._logits_cache.update(zip(keys, logits))
        return logits

    def _hidden_mse(self, mask) -> torch.Tensor:
        losses = []
        for student_name, teacher_name in self.config.hidden_layers:
            if student_name not in self._student_states:
                raise RuntimeError(f"student module {student_name!r} did not run in the forward pass; hidden_layers must name modules the forward uses")
            state = self._student_states[student_name]
            key = _key(student_name)
            if key in self.maps:
                state = self.maps[key](state)
            losses.append(masked_mse(state, self._teacher_states[teacher_name], mask))
        return torch.stack(losses).mean()

    def _make_maps(self, example_batch) -> nn.ModuleDict:
        """A linear map per layer pair whose widths differ (student width -> teacher width)."""
        if example_batch is None:
            raise ValueError("hidden_layers need example_batch= (one training batch) to read the layers' widths before training")
        probe: dict[str, torch.Tensor] = {}
        handles = [m.register_forward_hook(_capture(probe, n)) for n, m in self._s_modules.items()]
        try:
            with torch.no_grad():
                run_batch(self.student, to_device(example_batch, model_device(self.student)))
                self.teacher_forward(example_batch)
        finally:
            for handle in handles:
                handle.remove()
        maps = nn.ModuleDict()
        for student_name, teacher_name in self.config.hidden_layers:
            s_width, t_width = probe[student_name].shape[-1], self._teacher_states[teacher_name].shape[-1]
            if s_width != t_width:
                maps[_key(student_name)] = nn.Linear(s_width, t_width, bias=False).to(model_device(self.student))
        self._teacher_states.clear()
        return maps


def row_keys(batch) -> list[bytes] | None:
    """One key per example: a hash of its input tensors, padding (attention_mask == 0) left out, so
    an example padded to another length in another batch is the same example."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    inputs = {k: v for k, v in inputs.items() if k != "labels"} if isinstance(inputs, Mapping) else {"inputs": inputs}
    tensors = sorted((k, v) for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.ndim >= 1)
    if not tensors:
        return None
    mask = inputs.get("attention_mask")
    mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    keys = []
    for i in range(tensors[0][1].shape[0]):
        digest = hashlib.sha1()
        for name, tensor in tensors:
            row = tensor[i]
            if mask is not None and row.shape[:1] == mask[i].shape:
                row = row[mask[i]]
            digest.update(name.encode() + str(tuple(row.shape)).encode() + row.detach().cpu().contiguous().numpy().tobytes())
        keys.append(digest.digest())
    return keys


def average_across_processes(params: list[nn.Parameter]) -> None:
    """Under DDP, the mean of each gradient over the processes (DDP does this for the student only)."""
    import torch.distributed as dist

    if not params or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened distributions, averaged over examples
    (over unmasked tokens for sequence logits)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
                         "the teacher must solve the same task with the same labels")
    classes = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, classes) / temperature, dim=-1)
    per_row = (t.exp() * (t - s)).sum(-1)
    if mask is None:
        return per_row.mean()
    weights = mask.reshape(-1).to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1)


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if student.shape != teacher.shape:
        raise ValueError(f"hidden states differ in shape: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    error = (student.float() - teacher.float()).pow(2)
    if mask is None or mask.shape != error.shape[: mask.ndim]:
        return error.mean()
    weights = mask.to(error.dtype).reshape(*mask.shape, *([1] * (error.ndim - mask.ndim)))
    return (error * weights).sum() / (weights.sum().clamp_min(1) * error[(0,) * mask.ndim].numel())


def _token_mask(batch, logits: torch.Tensor) -> torch.Tensor | None:
    """For per-token logits (B, L, V): the batch's attention mask, so padding teaches nothing."""
    if logits.ndim < 3 or not isinstance(batch, Mapping):
        return None
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(logits.shape[:2]):
        return mask.to(logits.device)
    return None


def _modules(model: nn.Module, names: list[str], which: str) -> dict[str, nn.Module]:
    table = dict(model.named_modules())
    missing = [n for n in names if n not in table]
    if missing:
        known = [n for n in table if n][:8]
        raise ConfigError(f"hidden_layers: {which} has no module {missing[0]!r}; module names look like {known}")
    return {n: table[n] for n in names}


def _capture(store: dict, name: str):
    def hook(module, inputs, output):
        if hasattr(output, "to_tuple"):  # a transformers ModelOutput: its first field is the hidden state
            output = output.to_tuple()
        store[name] = output[0] if isinstance(output, (tuple, list)) else output
    return hook


def _key(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys cannot hold dots


def _shares_parameters(a: nn.Module, b: nn.Module) -> bool:
    mine = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in mine for p in b.parameters())
