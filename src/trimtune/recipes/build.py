"""From a validated recipe to the objects a run needs: records, the model and its tokenizer,
data loaders, and the pruning callback. Each piece is a call into the library."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import trimtune as tt

from ..data import load_demo_texts, text_loader
from ..data.digits import load_digits_split
from ..data.files import read_records, split_records
from ..data.instructions import read_instructions
from ..data.sft import SftOptions, sft_loader
from ..models import LeNet, load_pretrained, mean_pool_classifier, minilm_path
from .method_runs import adds_virtual_tokens
from .schema import DataSection, ModelSection, PruneSection, Recipe

IMAGE_BATCH = "digits"


@dataclass
class Records:
    """Train/eval examples before tokenisation; ``labels`` are the class names (classification)."""
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    labels: list[str] | None = None


def read_data(recipe: Recipe) -> Records:
    """Read and split the data first, so a bad file fails before a model is loaded."""
    section, task = recipe.data, recipe.model.task
    if section.train == IMAGE_BATCH:
        return Records(labels=[str(d) for d in range(10)])
    classify = task == "classification"
    columns = (section.text_column, section.label_column) if classify else (section.text_column,)
    train = _records(section, section.train, columns, classify)
    if section.eval is not None:
        held_out = _records(section, section.eval, columns, classify)
    else:
        train, held_out = split_records(train, section.eval_fraction, section.seed, stratify="label" if classify else None)
    if section.limit:
        train, held_out = train[: section.limit], held_out[: section.limit]
    if not train:
        raise ValueError(f"no training records are left from {section.train} after the eval split")
    labels = (section.labels or sorted({r["label"] for r in train})) if classify else None
    return Records(train, held_out, labels)


def _records(section: DataSection, source: str, columns: tuple[str, ...], classify: bool) -> list[dict]:
    if source == "demo":
        raw, columns = load_demo_texts(), ("text", "label")
    elif not classify:  # a causal LM learns text, prompt/completion pairs or chats
        return read_instructions(source, section.format, section.text_column)
    else:
        raw = read_records(source, section.format, columns)
    text, label = columns[0], columns[1] if classify else None
    return [{"text": str(r[text]), **({"label": str(r[label])} if classify else {})} for r in raw]


def model_dir(section: ModelSection) -> Path:
    if section.path == "minilm":
        return minilm_path()
    path = Path(section.path)
    if not path.exists():
        raise FileNotFoundError(
            f"model path {path} does not exist; model.path must be a local Hugging Face model directory "
            "(with config.json), 'minilm' or 'lenet'"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json, so it is not a Hugging Face model directory")
    return path


def load_model(section: ModelSection, labels: list[str] | None, trained_for: str | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer); the caller seeds torch first, so a new head starts the same every time.
    ``trained_for`` (e.g. "a distillation teacher"): every weight must come from the checkpoint, a head included."""
    if section.path == "lenet":
        return LeNet(), None
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = model_dir(section)
    tokenizer = AutoTokenizer.from_pretrained(section.tokenizer or path)
    if section.task == "causal-lm":
        return load_pretrained(AutoModelForCausalLM, path, trained_for=trained_for), tokenizer
    id2label, label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    if section.pooling == "mean":
        if trained_for is not None:
            raise ValueError(f"{path} cannot serve as {trained_for}: model.pooling: mean gives it a new, untrained head; "
                             "use a run directory (trimtune tune --out) whose head was trained")
        model = mean_pool_classifier(path, len(labels))
        model.config.update({"id2label": id2label, "label2id": label2id})
        return model, tokenizer
    model = load_pretrained(AutoModelForSequenceClassification, path, unused=("pooler.", "lm_head.", "cls."),
                            new=("classifier.", "score."), trained_for=trained_for, num_labels=len(labels), id2label=id2label,
                            label2id=label2id)
    if model.config.pad_token_id is None:  # decoders classify from the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, tokenizer


@dataclass
class Loaders:
    train: object
    eval: object | None
    metric: object = None  # accuracy for classification
    loss_fn: object = None  # images: cross entropy on (x, y) pairs
    data_report: dict | None = None  # causal LM: per split, what tokenising and packing did (truncated examples, ...)


def make_loaders(recipe: Recipe, records: Records, tokenizer, model: nn.Module | None = None) -> Loaders:
    """``model``: a causal LM whose data is packed is checked for how it keeps examples apart."""
    section, seed = recipe.data, recipe.data.seed
    if section.train == IMAGE_BATCH:
        return _digit_loaders(section)
    if recipe.model.task == "causal-lm":
        return _instruction_loaders(recipe, records, tokenizer, model)
    make = lambda rows, shuffle: text_loader(rows, tokenizer, tuple(records.labels), section.batch_size, section.max_length, shuffle, seed)
    return Loaders(make(records.train, True), make(records.eval, False) if records.eval else None, tt.accuracy)


def _instruction_loaders(recipe: Recipe, records: Records, tokenizer, model: nn.Module | None) -> Loaders:
    section = recipe.data
    # Distillation compares the teacher's logits with the student's at every position, and prompt methods put
    # virtual tokens in front (applied after this check), which moves every position: both keep all logits.
    virtual_tokens = recipe.method is not None and adds_virtual_tokens(recipe.method.type)
    options = SftOptions(section.max_length, section.completion_only_loss, section.chat_template, section.packing, section.pad_token,
                         loss_logits_only=recipe.distill is None and not virtual_tokens)
    train, report = sft_loader(records.train, tokenizer, options, section.batch_size, True, section.seed, model)
    reports = {"train": report}
    held_out = None
    if records.eval:
        held_out, reports["eval"] = sft_loader(records.eval, tokenizer, options, section.batch_size, False, section.seed, model)
    return Loaders(train, held_out, data_report=reports)


def _digit_loaders(section: DataSection) -> Loaders:
    from torch.utils.data import DataLoader, TensorDataset


    x_train, y_train, x_test, y_test = load_digits_split(section.eval_fraction or 0.25, section.seed)
    if section.limit:
        x_train, y_train, x_test, y_test = x_train[: section.limit], y_train[: section.limit], x_test[: section.limit], y_test[: section.limit]
    generator = torch.Generator().manual_seed(section.seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=section.batch_size, shuffle=True, generator=generator)
    held_out = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return Loaders(train, held_out, tt.accuracy, nn.functional.cross_entropy)


def example_inputs(loaders: Loaders):
    """One batch's inputs, as ``shrink`` wants them (a tuple of tensors, or keyword tensors)."""
    batch = next(iter(loaders.train))
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}
    return (batch[0],)


def prune_config(section: PruneSection, model: nn.Module, loaders: Loaders):
    """The library's PruneConfig; data-aware importances calibrate here on a few train batches."""
    from itertools import islice


    calibration = lambda: islice(iter(loaders.train), section.calibration_batches)
    if section.importance == "wanda":
        inputs = lambda: ((b if isinstance(b, dict) else b[0]) for b in calibration())
        strip = lambda b: {k: v for k, v in b.items() if k != "labels"} if isinstance(b, dict) else b
        importance = tt.Wanda(tt.collect_input_norms(model, (strip(b) for b in inputs()), section.targets))
    elif section.importance == "taylor":
        loss = lambda m, b: tt.run_batch(m, b, loaders.loss_fn).loss
        importance = tt.Taylor(tt.collect_taylor(model, calibration(), loss, section.targets))
    else:
        importance = {"magnitude": tt.Magnitude, "random": lambda: tt.Random(section.seed), "movement": tt.Movement}[section.importance]()
    return tt.PruneConfig(
        amount=section.sparsity, importance=importance, granularity=section.granularity, scope=section.scope,
        targets=section.targets, protect=section.protect,
    )
