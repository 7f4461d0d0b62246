"""Records from local files: CSV, JSON lines, a directory of text files, or a Hugging Face
``datasets`` file (parquet/arrow, or a directory written by ``Dataset.save_to_disk``).

Every reader returns a list of dicts; an empty source or a missing column is an error naming the
file and what it holds, so a bad data file fails before any model is loaded.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

from .jsonl import read_jsonl

FORMATS = ("csv", "jsonl", "text-dir", "hf")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "hf", ".arrow": "hf"}


def infer_format(path: Path) -> str:
    if path.is_dir():
        return "hf" if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() else "text-dir"
    if path.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[path.suffix.lower()]
    raise ValueError(f"cannot tell the format of {path} from its suffix; name one of {FORMATS} (data.format)")


def read_records(path: str | Path, format: str = "auto", columns: tuple[str, ...] = ()) -> list[dict]:
    """Records of ``path``; each must hold ``columns``. format: "auto" (from the suffix), or one of FORMATS."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    format = infer_format(path) if format == "auto" else format
    readers = {"csv": _read_csv, "jsonl": read_jsonl, "text-dir": _read_text_dir, "hf": _read_hf}
    if format not in readers:
        raise ValueError(f"data format must be 'auto' or one of {FORMATS}, got {format!r}")
    records = read_jsonl(path, required=columns[:0]) if format == "jsonl" else readers[format](path)
    if not records:
        raise ValueError(f"data file {path} holds no records")
    missing = [c for c in columns if c not in records[0]]
    if missing:
        raise ValueError(f"data file {path} has no column {missing}; its columns are {sorted(records[0])}")
    for number, record in enumerate(records, 1):  # every record, not only the first (a JSONL line may lack a key)
        gaps = [c for c in columns if record.get(c) is None]
        if gaps:
            raise ValueError(f"data file {path}, {record_location(path, format, number)}: no {gaps} (every record needs {list(columns)})")
    return records


def record_location(path: Path, format: str, number: int) -> str:
    """Where record ``number`` (1-based) is, for an error: its file line (CSV, JSONL), else its number."""
    return record_locations(path, format)(number)


def record_locations(path: Path, format: str) -> Callable[[int], str]:
    """``record_location`` for every record number, reading the file once."""
    format = infer_format(path) if format == "auto" else format
    if format == "jsonl":
        lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        return lambda number: f"line {lines[number - 1]}"
    if format == "csv":
        return lambda number: f"line {number + 1}"  # after the header
    return lambda number: f"record {number}"


def line_of(path: Path, format: str, number: int) -> int:
    """The file line of record ``number``: a CSV has its header first, a JSONL file may skip blank lines."""
    if format == "csv":
        return number + 1
    lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    return lines[number - 1]


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))


def _read_text_dir(path: Path) -> list[dict]:
    """``DIR/<label>/*.txt`` gives labelled texts (classification); ``DIR/*.txt`` plain texts (LM)."""
    records = [{"text": f.read_text(encoding="utf-8"), "label": f.parent.name} for f in sorted(path.glob("*/*.txt"))]
    return records + [{"text": f.read_text(encoding="utf-8")} for f in sorted(path.glob("*.txt"))]


# datasets' builder for a local file (its "jsonl" is called "json"), with the builder's options
_HF_BUILDERS = {".parquet": ("parquet", {}), ".arrow": ("arrow", {}), ".jsonl": ("json", {}), ".json": ("json", {}),
                ".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".txt": ("text", {})}


def _read_hf(path: Path) -> list[dict]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"reading {path} needs the `datasets` package: pip install datasets") from err
    if path.is_dir():
        return list(datasets.load_from_disk(str(path)))
    if path.suffix.lower() not in _HF_BUILDERS:
        raise ValueError(f"the datasets reader takes a save_to_disk directory or a file ending in one of "
                         f"{sorted(_HF_BUILDERS)}; {path} is neither")
    builder, options = _HF_BUILDERS[path.suffix.lower()]
    if path.is_file() and not path.read_bytes().strip():  # datasets' own error here has an empty message
        raise ValueError(f"{path} is empty: the data needs at least one record")
    try:
        return list(datasets.load_dataset(builder, data_files=str(path), split="train", **options))
    except Exception as err:  # datasets' own messages do not name the file
        reason = str(err).strip() or f"{type(err).__name__} with no message"
        raise ValueError(f"datasets could not read {path} as {builder}: {reason}") from err


def split_records(records: list[dict], eval_fraction: float, seed: int = 0, stratify: str | None = None) -> tuple[list[dict], list[dict]]:
    """(train, eval): a seeded shuffle; with ``stratify`` the same fraction of every class goes to eval."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    rng = random.Random(seed)
    groups: dict[object, list[dict]] = {}
    for r in records:
        groups.setdefault(r[stratify] if stratify else None, []).append(r)
    train, held_out = [], []
    for key in sorted(groups, key=str):
        members = groups[key]
        rng.shuffle(members)
        n_eval = round(len(members) * eval_fraction)
        held_out += members[:n_eval]
        train += members[n_eval:]
    rng.shuffle(train)
    return train, held_out
