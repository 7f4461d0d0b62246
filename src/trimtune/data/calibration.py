"""The calibration samples ``trimtune prune --model DIR --calib SOURCE`` (and a recipe's ``oneshot.calib``)
stands for, made before anything is written:

- a text file (``.txt``, or any suffix but the ones below): ``nsamples`` random windows of ``seqlen`` tokens from its token stream (seeded);
- a ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` file: each record's ``text`` field is one sample,
  tokenized as the tokenizer does by default (special tokens included, a text being a document of its
  own, as llm-compressor tokenizes) and cut to ``seqlen`` tokens; ``nsamples`` records drawn at random
  (seeded, kept in file order) when the file holds more;
- ``self``: ``nsamples`` windows sampled from the model itself (``prune.sequential.self_calib``); the
  directory's model is loaded whole to generate, then freed before the streamed prune.
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..prune.sequential.calib_text import calibration_samples, check_counts
from ..prune.sequential.pipeline import check_seqlen
from ..prune.sequential.self_calib import self_generated_samples
from ..prune.sequential.stream import empty_model
from .files import line_of, read_records

SELF = "self"
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
TEXT_FIELD = "text"


@dataclass
class Calibration:
    """The samples (a tensor, or a list of 1-D tensors) and what was done to make them, for the output."""

    samples: torch.Tensor | list[torch.Tensor]
    summary: dict


def load_calibration(source: str | Path, model_dir: Path, nsamples: int, seqlen: int, seed: int = 0) -> Calibration:
    from transformers import AutoConfig

    check_counts(nsamples, seqlen)
    check_seqlen(AutoConfig.from_pretrained(model_dir), seqlen)
    if str(source) == SELF:
        return _self_generated(model_dir, nsamples, seqlen, seed)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"--calib {path} does not exist (or is not a file); give a text file, a {'/'.join(RECORD_SUFFIXES)} "
                                f"file of records with a '{TEXT_FIELD}' field, or '{SELF}'")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if path.suffix.lower() in RECORD_SUFFIXES:
        return _records(path, tokenizer, nsamples, seqlen, seed)
    samples = calibration_samples(path, tokenizer, nsamples, seqlen, seed)  # any other file is plain text, as before
    return Calibration(samples, {"source": str(path), "kind": "random windows", "samples": nsamples, "tokens": seqlen})


def _records(path: Path, tokenizer, nsamples: int, seqlen: int, seed: int) -> Calibration:
    try:
        records = read_records(path, columns=(TEXT_FIELD,))
    except ValueError as err:
        raise ValueError(f"--calib {path}: {err}; each record's '{TEXT_FIELD}' field is one calibration sample") from None
    format = "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"
    for number, record in enumerate(records, 1):
        text = record[TEXT_FIELD]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"--calib {path}, line {line_of(path, format, number)}: '{TEXT_FIELD}' is "
                             f"{'empty' if isinstance(text, str) else type(text).__name__}; every calibration text needs words")
    chosen = range(len(records))
    if len(records) > nsamples:  # a seeded choice, in file order
        chosen = sorted(random.Random(seed).sample(range(len(records)), nsamples))
    samples, truncated = [], 0
    for index in chosen:
        ids = tokenizer(records[index][TEXT_FIELD], verbose=False)["input_ids"]
        if not ids:
            raise ValueError(f"--calib {path}, line {line_of(path, format, index + 1)}: '{TEXT_FIELD}' gives no tokens")
        truncated += len(ids) > seqlen
        samples.append(torch.tensor(ids[:seqlen], dtype=torch.long))
    return Calibration(samples, {"source": str(path), "kind": f"one sample per record's {TEXT_FIELD!r}", "records": len(records),
                                 "samples": len(samples), "tokens": sum(len(s) for s in samples),
                                 "truncated": truncated, "seqlen": seqlen})


def _self_generated(model_dir: Path, nsamples: int, seqlen: int, seed: int) -> Calibration:
    from transformers import AutoModelForCausalLM

    if not empty_model(model_dir).can_generate():  # checked on the meta device, before the weights are read
        raise ValueError(f"--calib {SELF} samples text from the model; {model_dir} holds a model that does not generate "
                         f"(e.g. a masked LM); give a text file instead")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")  # the whole model: generating needs every block
    try:
        samples = self_generated_samples(model, nsamples, seqlen, seed)
    finally:
        del model
        gc.collect()
    return Calibration(samples, {"source": SELF, "kind": "windows sampled from the model (temperature 1, top-k 50)",
                                 "samples": nsamples, "tokens": seqlen, "seed": seed})
