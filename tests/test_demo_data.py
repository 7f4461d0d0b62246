"""The shipped demo text set: loads, balanced, no duplicates, a fixed disjoint split, and batches."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trimtune.data import DEMO_LABELS, demo_split, load_demo_texts, read_jsonl, text_loader


def test_loads_balanced_without_duplicates():
    records = load_demo_texts()
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(DEMO_LABELS)
    assert len(set(counts.values())) == 1 and len(records) >= 300
    texts = [" ".join(r["text"].lower().split()) for r in records]
    assert len(set(texts)) == len(texts)
    assert all(len(t.split()) >= 4 for t in texts)


def test_split_is_fixed_stratified_and_disjoint():
    train, test = demo_split()
    again_train, again_test = demo_split()
    assert [r["text"] for r in train] == [r["text"] for r in again_train]
    assert [r["text"] for r in test] == [r["text"] for r in again_test]
    train_texts, test_texts = {r["text"] for r in train}, {r["text"] for r in test}
    assert not train_texts & test_texts
    assert len(train_texts | test_texts) == len(load_demo_texts())
    assert set(Counter(r["label"] for r in test).values()) == {round(len(load_demo_texts()) / len(DEMO_LABELS) * 0.3)}
    other_train, _ = demo_split(seed=1)
    assert {r["text"] for r in other_train} != train_texts


def test_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction must be in"):
        demo_split(test_fraction=1.0)


def test_text_loader_tokenises_pads_and_labels(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    records = load_demo_texts()[:5]
    batch = next(iter(text_loader(records, tokenizer, DEMO_LABELS, batch_size=5, max_length=8)))
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 5 and batch["input_ids"].shape[1] <= 8
    assert batch["labels"].tolist() == [DEMO_LABELS.index(r["label"]) for r in records]


def test_text_loader_rejects_unknown_label(minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    with pytest.raises(ValueError, match=r"\['spam'\] are not among the allowed"):
        text_loader([{"text": "hello there", "label": "spam"}], tokenizer, DEMO_LABELS)


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "food_good"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"text": "no label"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing key\(s\) \['label'\]"):
        read_jsonl(path, required=("text", "label"))
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no records"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
