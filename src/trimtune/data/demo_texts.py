"""The demo text set shipped with trimtune: short restaurant reviews, 4 classes (aspect x polarity).

Each review is about the food or the service and is positive or negative. Many use negation or
contrast ("not bad at all", "looked great but tasted of nothing"), so the label depends on how words
combine, which averaged sentence embeddings blur and fine-tuning can learn. The split is stratified
and fixed by a seed, so every user of the set (demo, tests, benchmarks) sees the same train/test.
"""

from __future__ import annotations

import random
from importlib import resources

from .jsonl import read_jsonl

DEMO_LABELS = ("food_good", "food_bad", "service_good", "service_bad")


def load_demo_texts() -> list[dict]:
    """All records: ``{"text": str, "label": str}`` with label in ``DEMO_LABELS``."""
    path = resources.files("trimtune.data").joinpath("demo_texts.jsonl")
    with resources.as_file(path) as file:
        records = read_jsonl(file, required=("text", "label"))
    unknown = {r["label"] for r in records} - set(DEMO_LABELS)
    if unknown:
        raise ValueError(f"demo_texts.jsonl has unknown labels {sorted(unknown)}; allowed: {DEMO_LABELS}")
    return records


def demo_split(test_fraction: float = 0.3, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test), stratified by label: the same ``test_fraction`` of every class goes to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = random.Random(seed)
    train, test = [], []
    records = load_demo_texts()
    for label in DEMO_LABELS:
        members = [r for r in records if r["label"] == label]
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        test += members[:n_test]
        train += members[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test
