"""A run's report: Markdown and/or HTML with PNG plots (matplotlib, Agg), and one JSON for machines.

It reads what the run directory holds and plots what is there. A pruning run tells its story
(``prune_story.json`` with ``summary.json`` and ``metrics.json``): accuracy dense vs pruned vs recovered
(and the teacher's, with distillation), eval accuracy and sparsity over the steps on one time axis,
params / file size / MACs / latency dense vs pruned, and the per-layer table of what was removed.
Also: the loss curve, the per-layer sparsity (``sparsity.json``), a shrink's before vs after
(``shrink.json``) and the AdaLoRA rank per layer (``adalora_ranks.json``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from trimtune.outputs import write_bytes, write_json

SOURCES = ("summary.json", "metrics.json", "eval.json", "sparsity.json", "prune_story.json", "shrink.json", "adalora_ranks.json")


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


def story_points(data) -> list[tuple[str, float, str]]:
    """(stage, accuracy, when) for dense, pruned, recovered and the teacher, from what the run recorded."""
    summary, story = data.get("summary", {}), data.get("prune_story", {})
    if not story and summary.get("teacher"):  # recovering an already pruned or shrunk model by distillation
        points = [("teacher", summary["teacher"], "the frozen teacher"), ("pruned", summary.get("before"), "before recovery"),
                  ("recovered", summary.get("after"), "end of the run")]
        return [(stage, m["accuracy"], when) for stage, m, when in points if m and "accuracy" in m]
    dense = story.get("dense") or (summary.get("before") if story else None)
    points = [
        ("dense", dense, f"step {dense['step']}, before pruning began" if dense and "step" in dense else "before training"),
        ("pruned", story.get("pruned"), f"step {story['pruned']['step']}, final sparsity reached" if story.get("pruned") else ""),
        ("recovered", summary.get("after") if story else None, "end of the run"),
        ("teacher", summary.get("teacher"), "the frozen teacher (distillation)"),
    ]
    return [(stage, m["accuracy"], when) for stage, m, when in points if m and "accuracy" in m]


def _story_accuracy(data, out):
    points = story_points(data)
    if len(points) < 2:
        return None
    import matplotlib.pyplot as plt

    colors = {"dense": "tab:gray", "pruned": "tab:red", "recovered": "tab:green", "teacher": "tab:purple"}
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    bars = ax.bar([p[0] for p in points], [100 * p[1] for p in points], color=[colors[p[0]] for p in points])
    ax.bar_label(bars, labels=[f"{100 * p[1]:.1f} %" for p in points])
    low = min(100 * p[1] for p in points)
    ax.set(ylabel="eval accuracy (%)", ylim=(max(0, low - 10), 100), title="What pruning cost, and what recovery won back")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out / "accuracy.png")
    return "Accuracy: dense, pruned, recovered", "accuracy.png"


def _story_timeline(data, out):
    trace = data.get("prune_story", {}).get("sparsity_trace") or []
    evals = [e for e in data.get("metrics", {}).get("eval_history", []) if "accuracy" in e]
    if not trace:
        return None
    import matplotlib.pyplot as plt

    story = data["prune_story"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between([t[0] for t in trace], [100 * t[1] for t in trace], step="post", color="tab:red", alpha=0.18, label="sparsity")
    ax.set(xlabel="optimizer step", ylabel="weights pruned (%)", ylim=(0, 100))
    ax.axvspan(story["begin"], max(story["end"], story["begin"] + 0.5), color="tab:orange", alpha=0.08, label="pruning ramp")
    if evals:
        acc = ax.twinx()
        acc.plot([e["step"] for e in evals], [100 * e["accuracy"] for e in evals], "o-", color="tab:blue", ms=3, label="eval accuracy")
        for stage, marker in (("dense", "s"), ("pruned", "v")):
            if story.get(stage, {}).get("accuracy") is not None:
                acc.plot(story[stage]["step"], 100 * story[stage]["accuracy"], marker, color="black", ms=7, label=stage)
        acc.set(ylabel="eval accuracy (%)", ylim=(0, 100))
        handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8)
    else:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    ax.set_title("Eval accuracy and sparsity over training")
    ax.grid(alpha=0.3)
    _save(fig, out / "timeline.png")
    return "Accuracy and sparsity over the steps", "timeline.png"


def size_rows(data) -> list[tuple[str, float, float]]:
    """(figure, dense, pruned): params, file bytes, and (structured masks removed for real) MACs, latency."""
    size = data.get("prune_story", {}).get("size") or {}
    rows = [("params (nonzero)", size.get("params_total"), size.get("params_nonzero")),
            ("file bytes", size.get("file_bytes_dense"), size.get("file_bytes_sparse"))]
    shrunk = size.get("shrunk") or {}
    if shrunk and shrunk.get("params_after") != shrunk.get("params_before"):
        rows += [("MACs (units removed)", shrunk.get("macs_before"), shrunk.get("macs_after")),
                 ("latency ms (units removed)", shrunk.get("latency_ms_before"), shrunk.get("latency_ms_after"))]
    return [r for r in rows if r[1] and r[2] is not None]


def _story_size(data, out):
    rows = size_rows(data)
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(2.7 * len(rows), 3.2), squeeze=False)
    for ax, (label, dense, pruned) in zip(axes[0], rows):
        ax.bar(["dense", "pruned"], [dense, pruned], color=["tab:gray", "tab:green"])
        ax.set_title(f"{label}\n{pruned / dense:.2f}x", fontsize=9)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 3))
    fig.suptitle("Size and speed: dense vs pruned")
    _save(fig, out / "size.png")
    return "Size and speed, dense vs pruned", "size.png"


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


PLOTS = (_story_accuracy, _story_timeline, _story_size, _loss_curve, _sparsity, _shrink, _ranks)


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
            rows.append((f"{key} {when} training", f"{value:.4f}"))
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


def _tables(data) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of the story: accuracy by stage, size dense vs pruned, what each layer lost."""
    tables = []
    points = story_points(data)
    if len(points) >= 2:
        tables.append(("Accuracy by stage", ["stage", "eval accuracy", "when"], [[s, f"{100 * a:.2f} %", w] for s, a, w in points]))
    sizes = size_rows(data)
    if sizes:
        tables.append(("Dense vs pruned", ["figure", "dense", "pruned", "pruned / dense"],
                       [[k, _num(d), _num(p), f"{p / d:.3f}"] for k, d, p in sizes]))
    layers = data.get("sparsity", {}).get("layers") or []
    if layers and "prune_story" in data:
        rows = [[l["name"], "×".join(map(str, l["shape"])), f"{100 * l['sparsity']:.1f} %", _units(l["zero_out"], l["shape"][0]),
                 _units(l["zero_in"], l["shape"][1] if len(l["shape"]) > 1 else 0), ", ".join(map(str, l.get("heads") or [])) or "-"]
                for l in layers]
        tables.append(("What was removed, per layer", ["layer", "shape", "pruned", "output units removed", "input units removed", "heads"], rows))
    return tables


def _num(value) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _units(removed: list[int], of: int) -> str:
    return f"{len(removed)} of {of}" if removed else "-"


def _markdown(run_dir, data, sections) -> str:
    lines = [f"# trimtune report: {run_dir}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _figures(data)]
    for title, headers, rows in _tables(data):
        lines += ["", f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    for title, png in sections:
        lines += ["", f"## {title}", "", f"![{title}]({png})"]
    return "\n".join(lines) + "\n"


def _html(run_dir, data, sections) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in _figures(data))
    for title, headers, body in _tables(data):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        rows += f"</table><h2>{html.escape(title)}</h2><table><tr>{head}</tr>{cells}"
    plots = "".join(f"<h2>{html.escape(t)}</h2><img src='{png}' alt='{html.escape(t)}'>" for t, png in sections)
    title = html.escape(f"trimtune report: {run_dir}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body><h1>{title}</h1><table>{rows}</table>{plots}</body></html>\n"
