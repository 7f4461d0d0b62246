"""Instruction records for causal-LM fine-tuning, read and checked before any model is loaded.

A file holds one of three shapes (the shapes TRL's SFTTrainer takes), found from its columns:

- ``text``: plain text, every token learned;
- ``prompt`` / ``completion``: the completion is learned, the prompt is context;
- ``messages``: chat turns ``{"role", "content"}`` rendered with a chat template; the assistant turns are learned.

Every record is checked here, so a bad one is named by its file and line (or record number) before
anything is tokenised, loaded or written; each keeps that location as ``where`` for later messages.
"""

from __future__ import annotations

import json
from pathlib import Path

from .files import read_records, record_locations

ROLES = ("system", "user", "assistant", "tool")
KINDS = ("messages", "prompt-completion", "text")


def read_instructions(path: str | Path, format: str = "auto", text_column: str = "text") -> list[dict]:
    """The records of ``path`` as ``{"text"}``, ``{"prompt", "completion"}`` or ``{"messages"}`` dicts."""
    path = Path(path)
    raw = read_records(path, format)
    kind = record_kind(raw, path, text_column)
    columns = {"messages": ("messages",), "prompt-completion": ("prompt", "completion"), "text": (text_column,)}[kind]
    locations = record_locations(path, format)
    records = []
    for number, record in enumerate(raw, 1):
        where = lambda: f"{path}, {locations(number)}"
        missing = [c for c in columns if record.get(c) is None]
        if missing:
            raise ValueError(f"data file {where()}: no {missing}; a {kind} file needs {list(columns)} on every line")
        records.append({**_checked(kind, record, columns, where), "where": where()})  # for errors and reports after the split
    return records


def record_kind(records: list[dict], source: object = "the data", text_column: str = "text") -> str:
    """Which shape the records have, from the columns any of them holds (a column missing on some line
    is then named for that line, rather than the file being taken for another shape)."""
    seen = set().union(*(r.keys() for r in records))
    if "messages" in seen:
        return "messages"
    if seen & {"prompt", "completion"}:
        return "prompt-completion"
    if text_column in seen:
        return "text"
    raise ValueError(f"data file {source} has none of the instruction columns: 'messages', 'prompt'/'completion' or "
                     f"{text_column!r} (data.text_column); its columns are {sorted(seen)}")


def _checked(kind: str, record: dict, columns: tuple[str, ...], where) -> dict:
    if kind == "messages":
        return {"messages": _messages(record["messages"], where)}
    values = {c: record[c] for c in columns}
    for column, value in values.items():
        if not isinstance(value, str):
            raise ValueError(f"data file {where()}: {column} must be a string, got {type(value).__name__} "
                             "(a conversational prompt goes in a messages column)")
    if kind == "prompt-completion":
        if not values["completion"].strip():
            raise ValueError(f"data file {where()}: the completion is empty; every example needs a completion to learn")
        return values
    if not values[columns[0]].strip():
        raise ValueError(f"data file {where()}: the {columns[0]} is empty")
    return {"text": values[columns[0]]}


def _messages(value, where) -> list[dict]:
    if isinstance(value, str):  # a CSV cell holds the turns as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"data file {where()}: messages is not valid JSON ({err.msg})") from None
    if not isinstance(value, list) or not value:
        raise ValueError(f"data file {where()}: messages must be a non-empty list of {{role, content}} turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ValueError(f"data file {where()}: message {i} must be an object with a string content")
        if turn.get("role") not in ROLES:
            raise ValueError(f"data file {where()}: message {i} has role {turn.get('role')!r}; allowed roles: {list(ROLES)}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise ValueError(f"data file {where()}: the messages have no assistant turn, so there is nothing to learn")
    return turns
