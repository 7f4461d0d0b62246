"""The recipe: one YAML file describing a whole run, validated with pydantic at load.

Unknown keys are rejected everywhere. The ``method`` section names a method (``type``) and passes
its other keys to that method's config dataclass, whose own ``__post_init__`` validates them: the
recipe adds no second copy of any method's rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import trimtune as tt

from ..models import minilm_path
from .method_runs import adds_virtual_tokens, recipe_methods


def section_error(section: str, err: Exception, fields: list[str], renames: dict[str, str] | None = None) -> str:
    """``section.field ...`` when the library's message starts with a field (renamed to the recipe's key),
    else ``section: ...``."""
    message = str(err)
    first = message.split(" ", 1)[0].split("=", 1)[0].split("[", 1)[0]
    renames = renames or {}
    if first in renames:
        return f"{section}.{renames[first]}{message[len(first):]}"
    return f"{section}.{message}" if first in fields else f"{section}: {message}"


def resolve_model_path(path: str):
    return minilm_path() if path == "minilm" else path


def did_you_mean(word: str, allowed) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr: .inf is no learning rate


class ModelSection(Section):
    """path: a local Hugging Face model directory, "minilm" (all-MiniLM-L6-v2, installed with
    trimtune) or "lenet" (a small CNN for the digits images). tokenizer: default the model's."""

    path: str
    task: Literal["classification", "causal-lm", "image-classification"] = "classification"
    tokenizer: str | None = None
    pooling: Literal["model", "mean"] = Field(
        "model", description="classification: 'model' uses the model's own Hugging Face classification head "
        "(BERT: the [CLS] pooler); 'mean' classifies the masked mean of the token states with a fresh linear "
        "`classifier` (trimtune.models.MeanPoolClassifier), the pooling sentence-embedding models such as "
        "all-MiniLM-L6-v2 were trained for")

    @model_validator(mode="after")
    def _pooling_is_for_text_classification(self):
        if self.pooling == "mean" and self.task != "classification":
            raise ValueError(f"model.pooling 'mean' is a text-classification head; model.task is {self.task!r}")
        return self


class DataSection(Section):
    """train: a CSV/JSONL file, a directory of text files, a ``datasets`` file or directory,
    "demo" (the shipped reviews) or "digits" (sklearn's images). eval: a separate file; without
    one, ``eval_fraction`` of train is held out (seeded, stratified by label)."""

    train: str
    eval: str | None = None
    format: Literal["auto", "csv", "jsonl", "text-dir", "hf"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    max_length: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="use only the first LIMIT train (and eval) records")
    # causal-lm instruction data (text, prompt/completion or messages records; data/instructions.py)
    completion_only_loss: bool = Field(True, description="causal-lm: loss on the completion / assistant tokens only; "
                                       "false: on every token")
    chat_template: str | None = Field(None, description="causal-lm messages: a Jinja chat template (default: the tokenizer's)")
    packing: bool = Field(False, description="causal-lm: pack examples into windows of max_length tokens, kept apart in "
                          "attention; batch_size then counts windows")
    pad_token: str | None = Field(None, description="causal-lm: the token batches are padded with (default: the tokenizer's); "
                                  "it must carry no loss")

    def sft_fields_set(self) -> list[str]:
        """The causal-lm-only fields this section changes from their defaults."""
        return [name for name in ("completion_only_loss", "chat_template", "packing", "pad_token")
                if getattr(self, name) != type(self).model_fields[name].default]


class MethodSection(BaseModel):
    """type: one of the method names; every other key is a field of that method's config."""
    model_config = ConfigDict(extra="allow")
    type: str

    def options(self) -> dict:
        return dict(self.model_extra or {})

    def build(self, model: ModelSection | None = None):
        """The method's config; ``model`` fills a ``tokenizer`` field the recipe leaves out with the model's
        (prompt and prefix tuning's init: TEXT read their text with the model's own tokenizer)."""
        table = recipe_methods()
        if self.type not in table:
            raise ValueError(f"method.type must be one of {sorted(table)}, got {self.type!r}{did_you_mean(self.type, table)}")
        cls = table[self.type]
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in self.options():
            if key not in fields:
                raise ValueError(f"unknown key method.{key} for {self.type}{did_you_mean(key, fields)}; allowed: {fields}")
        options = self.options()
        if "tokenizer" in fields and "tokenizer" not in options and model is not None and model.task != "image-classification":
            options["tokenizer"] = model.tokenizer or str(resolve_model_path(model.path))
        try:
            return cls(**options)  # the dataclass's own validation names field, value and what is allowed
        except tt.ConfigError as err:
            raise ValueError(section_error("method", err, fields)) from None


class PruneSection(Section):
    """sparsity: the fraction of units to prune at the end. schedule: how it is reached; timing:
    before training (at init), during it, or after a dense phase. With no training steps the model
    is pruned once. Wanda and Taylor importances calibrate on ``calibration_batches`` train batches."""

    sparsity: float = Field(0.5, ge=0.0, le=1.0)
    importance: Literal["magnitude", "random", "taylor", "wanda", "movement"] = "magnitude"
    granularity: str = "element"
    scope: Literal["layer", "global"] = "layer"
    schedule: Literal["one-shot", "iterative", "cubic"] = "one-shot"
    timing: Literal["before", "during", "after"] = "before"
    rounds: int = Field(3, ge=1)
    targets: str | list[str] | None = None
    protect: str | list[str] | None = None
    calibration_batches: int = Field(4, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _library_checks(self):
        try:  # the library's own rules (granularity names, N:M with global scope, timing vs style)
            tt.PruneConfig(amount=self.sparsity, granularity=self.granularity, scope=self.scope)
            tt.PruneSchedule.for_timing(self.timing, self.sparsity, 1, self.schedule)
        except tt.ConfigError as err:  # the library's field names are not the recipe's
            raise ValueError(section_error("prune", err, list(type(self).model_fields), {"amount": "sparsity", "final": "sparsity"})) from None
        return self

    @field_validator("granularity", mode="before")
    @classmethod
    def _quoted_n_m(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads an unquoted 2:4 as 2·60 + 4
            n, m = divmod(value, 60)
            raise ValueError(f"prune.granularity {value} is how YAML reads an unquoted {n}:{m} (as a base-60 number); "
                             f'quote it: granularity: "{n}:{m}"')
        return value


class TrainSection(Section):
    """epochs/max_steps: 0 epochs means no training (evaluate, prune or shrink only)."""
    epochs: int = Field(1, ge=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    grad_accum: int = Field(1, ge=1)
    clip_norm: float | None = Field(None, gt=0.0)
    eval_every: int | None = Field(None, ge=1)
    seed: int = 0
    checkpoint_every: int | None = Field(None, ge=1, description="save a resumable checkpoint every N steps (always at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="log line and metrics.csv row every N steps")
    tensorboard: bool = False


class OptimizerSection(Section):
    """LoRA+ (``tt.loraplus_optimizer``): the LoRA B factors (and trained vectors) learn at
    ``loraplus_ratio`` × train.lr, LoRA on embeddings at ``loraplus_lr_embedding``; AdamW, with
    ``weight_decay`` (biases and norms excepted). Needs a LoRA method (lora, dora, qlora)."""

    loraplus_ratio: float = Field(gt=0.0, description="B's learning rate / A's (the LoRA+ paper uses 16 to 2^4)")
    loraplus_lr_embedding: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)

    def factory(self):
        """What ``tt.train(optimizer=...)`` calls with the model and train.lr."""
        return functools.partial(tt.loraplus_optimizer, ratio=self.loraplus_ratio, embedding_lr=self.loraplus_lr_embedding,
                                 weight_decay=self.weight_decay)


class DistributedSection(Section):
    """How several processes (torchrun / accelerate launch) share the work. strategy "ddp": each
    process keeps the whole model and gradients are all-reduced; "fsdp": FSDP2 shards every
    parameter across the processes, one unit per transformer block (``block_classes``: the block
    class names for architectures trimtune does not know; ``layer_units``: also a unit per wrapped
    layer, so a process holds one layer whole at a time rather than one block). One process ignores it."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    block_classes: list[str] | None = None
    layer_units: bool = False


class OneShotSection(Section):
    """Block-by-block pruning of a model directory (``trimtune prune RECIPE`` with this section instead of
    data/method/prune): the fields of ``trimtune prune --model`` (see ``trimtune prune --help``)."""

    method: Literal["magnitude", "wanda", "sparsegpt"] = "sparsegpt"
    sparsity: float | str = 0.5
    calib: str | None = None  # a .txt/.jsonl/.csv file or "self"; required by wanda and sparsegpt (checked when the run starts)
    nsamples: int = Field(128, ge=1)
    seqlen: int = Field(2048, ge=1)
    seed: int = 0
    blocksize: int = Field(128, ge=1)
    percdamp: float = Field(0.01, ge=0.0)
    owl: bool = False
    owl_m: float = Field(5.0, gt=0.0)
    owl_lambda: float = Field(0.08, ge=0.0)
    selection: Literal["exact", "reference"] = "exact"
    batch_tokens: int = Field(2048, ge=1)

    @model_validator(mode="after")
    def _library_checks(self):
        try:
            tt.SequentialConfig(self.method, self.sparsity, self.blocksize, self.percdamp, self.owl, self.owl_m, self.owl_lambda, self.selection,
                             self.batch_tokens)
        except tt.ConfigError as err:
            raise ValueError(section_error("oneshot", err, list(type(self).model_fields))) from None
        return self

    @field_validator("sparsity", mode="before")
    @classmethod
    def _quoted_n_m(cls, value):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 60:  # YAML 1.1: unquoted 2:4 is 124
            n, m = divmod(value, 60)
            raise ValueError(f'oneshot.sparsity {value} is how YAML reads an unquoted {n}:{m}; quote it: sparsity: "{n}:{m}"')
        return value


class ShrinkSection(Section):
    """Structured shrinking of a causal LM directory (``trimtune shrink RECIPE`` with ``model`` and this
    section): the fields of ``trimtune shrink --model`` (see ``trimtune shrink --help``)."""

    heads: float = 0.0
    ffn: float = 0.0
    hidden: float = 0.0
    drop_layers: int = 0
    importance: Literal["activation", "fluctuation", "wanda"] = "fluctuation"
    depth_metric: Literal["block-influence", "angular"] = "block-influence"
    repair: Literal["none", "bias", "lstsq"] = "lstsq"
    gqa: Literal["kv", "query"] = "kv"
    percdamp: float = Field(0.01, ge=0.0)
    calib: str = Field(description="a .txt, .jsonl or .csv file, or 'self'")
    nsamples: int = Field(128, ge=1)
    seqlen: int = Field(2048, ge=2)
    seed: int = 0
    batch_tokens: int = Field(2048, ge=1)
    round_to: int = Field(1, ge=1)

    def build(self) -> tt.StructuredConfig:
        return tt.StructuredConfig(self.heads, self.ffn, self.hidden, self.drop_layers, self.importance, self.depth_metric,
                                self.repair, self.gqa, self.percdamp, self.batch_tokens, self.round_to)

    @model_validator(mode="after")
    def _library_checks(self):
        try:
            self.build()
        except tt.ConfigError as err:
            raise ValueError(section_error("shrink", err, list(type(self).model_fields))) from None
        return self


class DistillSection(Section):
    """Recover by learning from a frozen teacher: loss (1 − alpha)·task + alpha·T²·KL(teacher ‖ student)
    + hidden_weight · MSE over ``hidden_layers``; with ``augment`` the KL also covers perturbed copies
    of each batch that the teacher labels. teacher: a run directory, a ``trimtune shrink`` output
    or a Hugging Face directory; default: the run a shrunk ``model.path`` was cut from (or the directory a
    ``trimtune prune --model`` output was pruned from), else the model as loaded, before the method and
    pruning."""

    teacher: str | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_layers: list[str | list[str]] = Field(default_factory=list, description="module names (or [student, teacher] pairs) whose outputs are matched")
    hidden_weight: float = 1.0
    cache_teacher: bool = True
    augment: float = Field(0.0, description="share of tokens swapped in the perturbed copies the teacher labels (0: none)")
    augment_copies: int = 1

    @model_validator(mode="after")
    def _library_checks(self):
        self.build()
        return self

    def build(self) -> tt.DistillConfig:
        try:
            return tt.DistillConfig(self.alpha, self.temperature, self.hidden_layers, self.hidden_weight, self.cache_teacher,
                                 self.augment, self.augment_copies)
        except tt.ConfigError as err:
            raise ValueError(f"distill.{err}") from None


class Recipe(Section):
    model: ModelSection
    data: DataSection | None = None
    oneshot: OneShotSection | None = None
    shrink: ShrinkSection | None = None
    method: MethodSection | None = None
    prune: PruneSection | None = None
    distill: DistillSection | None = None
    train: TrainSection = Field(default_factory=TrainSection)
    optimizer: OptimizerSection | None = None
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    output: str = Field("runs/run", description="the run directory when no --out is given; a relative path is taken from "
                        "the current directory (as --out and model.path are), not from the recipe's folder")

    @model_validator(mode="before")
    @classmethod
    def _diff_penalty_moved(cls, data):
        """``train.diff_penalty`` became the diff's own ``method.penalty_weight`` (so ``tt.train`` applies it
        as ``trimtune tune`` does); a recipe that still says it is read as saying the new field."""
        train = data.get("train") if isinstance(data, dict) else None
        if not (isinstance(train, dict) and "diff_penalty" in train):
            return data
        train = dict(train)
        weight = train.pop("diff_penalty")
        method = data.get("method")
        is_diff = isinstance(method, dict) and method.get("type") == "diff"
        if is_diff and "penalty_weight" in method and method["penalty_weight"] != weight:
            raise ValueError(f"train.diff_penalty ({weight!r}) is the old name of method.penalty_weight ({method['penalty_weight']!r}); "
                             "keep only method.penalty_weight")
        if is_diff:
            method = {**method, "penalty_weight": weight}
        elif weight:  # 0.0 is what every resolved recipe.yaml of older runs records
            raise ValueError(f"train.diff_penalty ({weight!r}) is now method.penalty_weight and weighs a diff's sparsity loss; "
                             "this recipe's method is not diff")
        return {**data, "train": train, **({"method": method} if is_diff else {})}

    @model_validator(mode="after")
    def _method_builds(self):
        if self.method is not None:
            self.method.build(self.model)  # refused here, at load, rather than after the data is read
        return self

    @model_validator(mode="after")
    def _loraplus_needs_lora(self):
        if self.optimizer is not None and (self.method is None or not tt.trains_lora_factors(self.method.build(self.model))):
            method = self.method.type if self.method is not None else "none"
            raise ValueError(f"optimizer.loraplus_ratio sets the learning rate of LoRA's B factors, but method.type is {method!r}; "
                             "use a LoRA method (lora, dora, qlora) or leave out the optimizer section")
        return self

    @model_validator(mode="after")
    def _data_or_oneshot(self):
        walks = [name for name in ("oneshot", "shrink") if getattr(self, name) is not None]
        if walks:
            extra = [name for name in ("data", "method", "prune", "distill", "oneshot", "shrink") if name != walks[0] and getattr(self, name) is not None]
            if extra:
                raise ValueError(f"a {walks[0]}: recipe changes a model directory block by block; it takes no {extra} section(s)")
        elif self.data is None:
            raise ValueError("missing key data (or a oneshot: or shrink: section, to prune or shrink a model directory block by block)")
        return self

    @model_validator(mode="after")
    def _task_fits_data(self):
        if self.data is None:
            return self
        images = self.model.task == "image-classification"
        if images != (self.data.train == "digits"):
            raise ValueError("model.task 'image-classification' goes with data.train 'digits' (and only it)")
        if self.distributed.strategy == "fsdp" and self.prune:
            raise ValueError("distributed.strategy 'fsdp' trains adapters (a method section, no prune section): masks that change "
                             "during training (prune.schedule / prune.timing) are not supported under FSDP; run the prune section "
                             "with strategy 'ddp', or prune before sharding from the Python API (prune, then shard_model: fixed masks)")
        if self.distributed.strategy == "fsdp" and self.method is None:
            raise ValueError("distributed.strategy 'fsdp' trains adapters (a method section); training the whole model (no method) "
                             "runs with strategy 'ddp'")
        if self.model.task != "causal-lm" and self.data.sft_fields_set():
            raise ValueError(f"data.{self.data.sft_fields_set()[0]} is for instruction data of a causal LM; model.task is {self.model.task!r}")
        if self.data.packing and self.method is not None and adds_virtual_tokens(self.method.type):
            raise ValueError(f"data.packing cannot go with method.type {self.method.type!r}: its virtual tokens in front of each row "
                             "would be shared by the packed examples; set data.packing: false")
        if self.distill is not None and not (self.train.epochs or self.train.max_steps):
            raise ValueError("distill needs training: set train.epochs or train.max_steps above 0")
        return self
