"""A run's report: Markdown and/or HTML with PNG plots (matplotlib, Agg), and one JSON for machines.

It reads what the run directory holds and plots what is there: the loss curve (``metrics.json``),
the per-layer sparsity (``sparsity.json``, from a prune run), params / file size / MACs / latency
before vs after (``shrink.json``) and the AdaLoRA rank per layer (``adalora_ranks.json``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .core.io.atomic import write_bytes, write_json

SOURCES = ("summary.json", "metrics.json", "eval.json", "sparsity.json", "shrink.json", "adalora_ranks.json")


def build_report(run_dir: str | Path, formats: tuple[str, ...] = ("md",)) -> dict:
    """Write ``report/`` into ``run_dir`` (report.md / report.html, report.json, *.png); returns the JSON."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    run_dir = Path(run_dir)
    data = {name.removesuffix(".json"): json.loads((run_dir / name).read_text()) for name in SOURCES if (run_dir / name).is_file()}
    if not data:
        raise FileNotFoundError(f"{run_dir} holds none of {list(SOURCES)}; give the directory of a tune, prune, diff or shrink run")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    sections = [section for plot in PLOTS if (section := plot(data, out)) is not None]
    write_json(out / "report.json", {"run_dir": str(run_dir), **data})
    if "md" in formats:
        write_bytes(out / "report.md", _markdown(run_dir, data, sections).encode())
    if "html" in formats:
        write_bytes(out / "report.html", _html(run_dir, data, sections).encode())
    return {"dir": str(out), "plots": [s[1] for s in sections]}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _loss_curve(data, out):
    losses = data.get("metrics", {}).get("losses") or []
    if not losses:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, label="train loss (per step)")
    evals = [e for e in data["metrics"].get("eval_history", []) if "loss" in e]
    if evals:
        ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="eval loss")
    ax.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "loss.png")
    return "Loss curve", "loss.png"


def _sparsity(data, out):
    layers = data.get("sparsity", {}).get("layers") or []
    if not layers:
        return None
    import matplotlib.pyplot as plt

    names = [_short(layer["name"]) for layer in layers]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * len(names)))
    ax.barh(names, [100 * layer["sparsity"] for layer in layers], color="tab:red")
    ax.invert_yaxis()
    total = 100 * data["sparsity"]["total"]["sparsity"]
    ax.set(xlabel="weights pruned (%)", xlim=(0, 100), title=f"Sparsity per layer (overall {total:.1f} %)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out / "sparsity.png")
    return "Sparsity per layer", "sparsity.png"


def _shrink(data, out):
    shrink = data.get("shrink")
    if not shrink:
        return None
    import matplotlib.pyplot as plt

    rows = [(label, shrink.get(f"{key}_before"), shrink.get(f"{key}_after"))
            for label, key in (("params", "params"), ("file bytes", "bytes"), ("MACs", "macs"), ("latency ms", "latency_ms"))]
    rows = [r for r in rows if r[1]]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.2), squeeze=False)
    for ax, (label, before, after) in zip(axes[0], rows):
        ax.bar(["before", "after"], [before, after], color=["tab:gray", "tab:green"])
        ax.set_title(f"{label}\n{after / before:.2f}x")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 3))
    fig.suptitle("Shrink: before vs after")
    _save(fig, out / "shrink.png")
    return "Size before vs after", "shrink.png"


def _ranks(data, out):
    ranks = data.get("adalora_ranks")
    if not ranks:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * len(ranks)))
    ax.barh([_short(n) for n in ranks], list(ranks.values()), color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel="rank kept", title="AdaLoRA rank per layer")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, out / "adalora_ranks.png")
    return "AdaLoRA rank per layer", "adalora_ranks.png"


PLOTS = (_loss_curve, _sparsity, _shrink, _ranks)


def _short(name: str) -> str:
    """Layer names without the usual long prefixes, so bar labels stay readable."""
    for prefix in ("bert.encoder.layer.", "model.layers.", "transformer.h."):
        name = name.replace(prefix, "L")
    return name


def _figures(data) -> list[tuple[str, str]]:
    rows = []
    summary = data.get("summary", {})
    for when in ("before", "after"):
        for key, value in (summary.get(when) or {}).items():
            rows.append((f"{key} {when}", f"{value:.4f}"))
    for key, value in (data.get("eval") or {}).items():
        rows.append((f"{key} (eval)", f"{value:.4f}"))
    if "sparsity" in data:
        rows.append(("overall sparsity", f"{100 * data['sparsity']['total']['sparsity']:.2f} %"))
    if "diff" in summary:
        rows.append(("diff entries kept", f"{summary['diff']['kept']:,} of {summary['diff']['total']:,}"))
    if "shrink" in data:
        s = data["shrink"]
        rows.append(("params", f"{s['params_before']:,} -> {s['params_after']:,}"))
    return rows


def _markdown(run_dir, data, sections) -> str:
    lines = [f"# trimtune report: {run_dir}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _figures(data)]
    for title, png in sections:
        lines += ["", f"## {title}", "", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


def _html(run_dir, data, sections) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _figures(data))
    plots = "".join(f"<h2>{html.escape(t)}</h2><img src='{png}' alt='{html.escape(t)}'>" for t, png in sections)
    title = html.escape(f"trimtune report: {run_dir}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1><table>{rows}</table>{plots}</body></html>\n"
