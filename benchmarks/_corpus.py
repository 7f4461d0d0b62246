"""English text for LLM benchmarks, with no network: the reStructuredText sources of Python's own
documentation, which Debian ships (``apt-get install python3.11-doc``: /usr/share/doc/python3.11/html/_sources).

Three disjoint parts, by folder, so calibration, recovery training and evaluation never share a page:

- ``calib``: the tutorial and library pages a-m (calibration windows),
- ``train``: library pages n-z and the reference (recovery fine-tuning),
- ``heldout``: the HOWTOs and the FAQ (perplexity; never read by a pruner or a training run).
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCES = Path(os.environ.get("TRIMTUNE_DOC_SOURCES", "/usr/share/doc/python3.11/html/_sources"))
CACHE = Path(os.environ.get("TRIMTUNE_CORPUS_DIR", "/work/models/corpus"))


def _pages(*patterns: str) -> list[Path]:
    if not SOURCES.is_dir():
        raise SystemExit(f"{SOURCES} is missing: `apt-get install python3.11-doc` ships the text these benchmarks read")
    pages: list[Path] = []
    for pattern in patterns:
        pages.extend(sorted(SOURCES.glob(pattern)))
    return pages


PARTS = {
    "calib": lambda: _pages("tutorial/*.rst.txt", "library/[a-m]*.rst.txt"),
    "train": lambda: _pages("library/[n-z]*.rst.txt", "reference/*.rst.txt"),
    "heldout": lambda: _pages("howto/*.rst.txt", "faq/*.rst.txt"),
}


def corpus_file(part: str) -> Path:
    """One part as a single UTF-8 text file (pages joined by blank lines), written once."""
    path = CACHE / f"{part}.txt"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in PARTS[part]())
        tmp = path.with_suffix(".partial")
        tmp.write_text(text, encoding="utf-8")
        tmp.rename(path)
    return path


if __name__ == "__main__":
    for name in PARTS:
        f = corpus_file(name)
        print(name, f, f.stat().st_size)
