"""Read JSON-lines files with errors that name the file, the line and what was expected."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """One JSON object per non-empty line; each must have the ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"{path}:{number}: missing key(s) {missing}; each line needs {list(required)}")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records
