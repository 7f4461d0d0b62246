"""The Hugging Face `datasets` reader (data.format "hf", or parquet/arrow/save_to_disk found by
suffix) on local files, with the hub switched off: every route gives the records the plain readers
give, and bad input is named."""

from __future__ import annotations

import json

import datasets
import pytest

from trimtune.data.files import read_records

RECORDS = [{"text": "hello there", "label": "a"}, {"text": "not bad, at all", "label": "b"}, {"text": "x\ty", "label": "a"}]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and datasets' cache in the test's own directory (its config is read at import)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


def write_sources(root):
    """The same records as parquet, arrow, a save_to_disk directory, JSONL, CSV and TSV."""
    dataset = datasets.Dataset.from_list(RECORDS)
    dataset.to_parquet(str(root / "d.parquet"))
    dataset.save_to_disk(str(root / "saved"))
    arrow = next((root / "saved").glob("*.arrow"))
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (root / "d.csv").write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in RECORDS))
    (root / "d.tsv").write_text("text\tlabel\n" + "".join(f'"{r["text"]}"\t{r["label"]}\n' for r in RECORDS))
    return {"parquet": root / "d.parquet", "save_to_disk": root / "saved", "arrow": arrow,
            "jsonl": root / "d.jsonl", "csv": root / "d.csv", "tsv": root / "d.tsv"}


def test_every_local_source_reads_back_the_records(tmp_path):
    sources = write_sources(tmp_path)
    for kind, path in sources.items():
        assert read_records(path, format="hf", columns=("text", "label")) == RECORDS, kind
    for kind in ("parquet", "save_to_disk", "arrow"):  # found by suffix / directory contents alone
        assert read_records(sources[kind], columns=("text", "label")) == RECORDS, kind
    for kind in ("jsonl", "csv", "tsv"):  # the datasets route agrees with the plain readers
        assert read_records(sources[kind]) == read_records(sources[kind], format="hf"), kind


def test_datasets_reader_errors(tmp_path):
    sources = write_sources(tmp_path)
    with pytest.raises(ValueError, match=r"d.parquet has no column \['sentence'\]; its columns are \['label', 'text'\]"):
        read_records(sources["parquet"], columns=("sentence",))
    datasets.Dataset.from_dict({"text": [], "label": []}).to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ValueError, match="datasets could not read .*empty.parquet as parquet: .*no data"):
        read_records(tmp_path / "empty.parquet")
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(ValueError, match=r"save_to_disk directory or a file ending in one of .*d.xml is neither"):
        read_records(tmp_path / "d.xml", format="hf")
