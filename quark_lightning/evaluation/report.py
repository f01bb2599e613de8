"""Evaluation reports: Markdown + JSON + PNG plots from the dicts of `evaluation_metrics`.

`write_report(history, out_dir)` renders the whole history of one run (the last entry is the current
evaluation) into `out_dir`:

- `report.md`: every dimension (category, mean, pass rate, target, change since the first evaluation),
  the categories, the weakest clinical areas, the diagnosis (top findings with an example each), the
  actions taken or proposed, and the plots embedded with relative links;
- `metrics.json`: the whole history and the weight trajectories (non-finite numbers become `null`);
- `dimensions.png`, `categories.png`: pass rate over the evaluations' steps; `weights.png`: each
  dimension's weight over steps (when weights are given); `areas.png`: the current pass rate per
  clinical area, worst first.

`summary_table(first, last)` (start vs end of a run) and `comparison_table({model: metrics})` (several
models side by side) return Markdown tables.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

MAX_ANSWER_CHARS = 200
MAX_FINDINGS = 10
WORST_AREAS = 5


# ---------------------------------------------------------------------------------------- formatting
def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "–"


def _num(x: Any) -> str:
    return f"{x:.3f}" if _finite(x) else "–"


def _pp(a: Any, b: Any) -> str:
    """Change from a to b in percentage points."""
    return f"{100 * (b - a):+.1f} pp" if _finite(a) and _finite(b) else "–"


def _diff(a: Any, b: Any) -> str:
    return f"{b - a:+.3f}" if _finite(a) and _finite(b) else "–"


def _cell(text: Any) -> str:
    """Text that is safe inside one Markdown table cell or blockquote line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _truncate(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------- tables
def summary_table(first: dict, last: dict) -> str:
    """Every dimension and category of a run: start vs end vs change, for pass rate and mean."""
    header = [
        "",
        "category",
        "pass rate start",
        "pass rate end",
        "change",
        "mean start",
        "mean end",
        "change",
    ]
    rows = []
    for name, end in last["dimensions"].items():
        start = first["dimensions"].get(name, {})
        a, b = start.get("pass_rate"), end.get("pass_rate")
        ma, mb = start.get("mean"), end.get("mean")
        rows.append(
            [_cell(name), _cell(end.get("category")), _pct(a), _pct(b), _pp(a, b), _num(ma), _num(mb)]
        )
        rows[-1].append(_diff(ma, mb))
    for cat, end in last["categories"].items():
        a, b = first["categories"].get(cat, {}).get("pass_rate"), end.get("pass_rate")
        rows.append([f"**{_cell(cat)}**", "(category)", _pct(a), _pct(b), _pp(a, b), "–", "–", "–"])
    rows += _answer_rows(first.get("answers", {}), last.get("answers", {}))
    return _table(header, rows)


def _answer_rows(first: dict, last: dict) -> list[list[str]]:
    """Length beside quality: the answers' mean length (tokens) and share cut at the cap, when recorded."""
    if not first or not last:
        return []
    a, b = first.get("cut_share"), last.get("cut_share")
    ta, tb = first.get("mean_tokens"), last.get("mean_tokens")
    return [
        ["*answer length (tokens)*", "(answers)", "–", "–", "–", _num(ta), _num(tb), _diff(ta, tb)],
        ["*cut at the cap*", "(answers)", _pct(a), _pct(b), _pp(a, b), "–", "–", "–"],
    ]


def comparison_table(results: dict[str, dict]) -> str:
    """Several models' evaluations side by side: one column per model, each cell `pass rate (mean)`."""
    names = list(results)
    dims: dict[str, str] = {}
    cats: list[str] = []
    for metrics in results.values():
        for d, row in metrics["dimensions"].items():
            dims.setdefault(d, row.get("category"))
        cats += [c for c in metrics["categories"] if c not in cats]
    rows = []
    for d, cat in dims.items():
        cells = []
        for n in names:
            row = results[n]["dimensions"].get(d, {})
            cells.append(f"{_pct(row.get('pass_rate'))} ({_num(row.get('mean'))})" if row else "–")
        failed = " / ".join(str(results[n]["dimensions"].get(d, {}).get("failed", "–")) for n in names)
        rows.append([_cell(d), _cell(cat)] + cells + [failed])
    for c in cats:
        rows.append(
            [f"**{_cell(c)}**", "(category)"]
            + [_pct(results[n]["categories"].get(c, {}).get("pass_rate")) for n in names]
            + ["–"]
        )
    table = _table(["", "category"] + [_cell(n) for n in names] + ["failed"], rows)
    return table + (
        "\n\nCells: pass rate (mean raw score); category rows: mean pass rate of its dimensions. "
        f"failed: answers the dimension's scorer failed on, per model ({' / '.join(_cell(n) for n in names)}); "
        "they are not in the pass rate and are not counted as not applicable."
    )


# ---------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line_plot(path: str, series: dict[str, list[tuple[int, float]]], title: str, ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for name, points in series.items():
            pts = [(s, v) for s, v in points if _finite(v)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        if ylabel == "pass rate":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _areas_plot(path: str, areas: dict[str, dict]) -> None:
    plt = _plt()
    ranked = sorted(
        ((a, r["pass_rate"]) for a, r in areas.items() if _finite(r.get("pass_rate"))), key=lambda x: x[1]
    )
    fig, ax = plt.subplots(figsize=(7, max(2.0, 0.35 * len(ranked) + 1)))
    try:
        ax.barh([a for a, _ in ranked], [v for _, v in ranked], color="tab:blue")
        ax.invert_yaxis()  # worst at the top
        ax.set(title="Pass rate per clinical area (worst first)", xlabel="pass rate", xlim=(0, 1))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _plots(history: list[dict], weights: dict | None, out_dir: str) -> list[tuple[str, str]]:
    """Write the PNGs; return (caption, file name) of each one written."""
    steps = [h["step"] for h in history]
    dims = {
        d: [(s, h["dimensions"].get(d, {}).get("pass_rate")) for s, h in zip(steps, history)]
        for d in history[-1]["dimensions"]
    }
    cats = {
        c: [(s, h["categories"].get(c, {}).get("pass_rate")) for s, h in zip(steps, history)]
        for c in history[-1]["categories"]
    }
    written = []
    _line_plot(os.path.join(out_dir, "dimensions.png"), dims, "Pass rate per dimension", "pass rate")
    written.append(("Pass rate per dimension", "dimensions.png"))
    _line_plot(os.path.join(out_dir, "categories.png"), cats, "Pass rate per category", "pass rate")
    written.append(("Pass rate per category", "categories.png"))
    if weights:
        series = {d: [(int(s), float(w)) for s, w in pts] for d, pts in weights.items()}
        _line_plot(os.path.join(out_dir, "weights.png"), series, "Dimension weights", "weight")
        written.append(("Dimension weights", "weights.png"))
    if history[-1].get("areas"):
        _areas_plot(os.path.join(out_dir, "areas.png"), history[-1]["areas"])
        written.append(("Pass rate per clinical area", "areas.png"))
    return written


# ---------------------------------------------------------------------------------------- report
def _target_cell(row: dict) -> str:
    target = row.get("target")
    if target == "reference":
        return f"≥ reference ({_num(row.get('reference_mean'))})"
    return _num(target) if target is not None else "median"


def _dimension_section(history: list[dict]) -> str:
    first, last = history[0], history[-1]
    rows = []
    for name, row in last["dimensions"].items():
        start = first["dimensions"].get(name, {}).get("pass_rate")
        rows.append(
            [
                _cell(name),
                _cell(row.get("category")),
                _num(row.get("mean")),
                _pct(row.get("pass_rate")),
                _target_cell(row),
                _pp(start, row.get("pass_rate")) if len(history) > 1 else "–",
                str(row.get("count", "–")),
                str(row.get("failed", "–")),
                str(row.get("not_applicable", "–")),
            ]
        )
    header = [
        "dimension",
        "category",
        "mean",
        "pass rate",
        "target",
        f"change since step {first['step']}",
        "n",
        "failed",
        "not applicable",
    ]
    note = (
        "\n\nn: answers scored; failed: the scorer failed on the answer (a fault, see the run log); "
        "not applicable: the dimension does not apply to the prompt. Only scored answers enter the mean and "
        "the pass rate."
    )
    return "## Dimensions\n\n" + _table(header, rows) + note


def _category_section(history: list[dict]) -> str:
    first, last = history[0], history[-1]
    rows = []
    for cat, row in last["categories"].items():
        members = [d for d, r in last["dimensions"].items() if r.get("category") == cat]
        start = first["categories"].get(cat, {}).get("pass_rate")
        change = _pp(start, row.get("pass_rate")) if len(history) > 1 else "–"
        rows.append([_cell(cat), _pct(row.get("pass_rate")), change, _cell(", ".join(members))])
    return "## Categories\n\n" + _table(["category", "pass rate", "change", "dimensions"], rows)


def _area_section(last: dict) -> str:
    areas = [(a, r) for a, r in last.get("areas", {}).items() if _finite(r.get("pass_rate"))]
    if not areas:
        return ""
    rows = []
    for area, row in sorted(areas, key=lambda x: x[1]["pass_rate"])[:WORST_AREAS]:
        per_dim = [(d, v) for d, v in row.get("dimensions", {}).items() if _finite(v)]
        weakest = min(per_dim, key=lambda x: x[1]) if per_dim else None
        rows.append(
            [
                _cell(area),
                str(row.get("count", "–")),
                _pct(row["pass_rate"]),
                f"{_cell(weakest[0])} ({_pct(weakest[1])})" if weakest else "–",
            ]
        )
    title = f"## Weakest clinical areas ({min(WORST_AREAS, len(areas))} of {len(areas)})\n\n"
    return title + _table(["area", "answers", "pass rate", "weakest dimension"], rows)


MAX_ACTIONS_PER_FINDING = 3


def _diagnosis_section(last: dict) -> str:
    findings = last.get("diagnosis") or []
    if not findings:
        return "## Diagnosis\n\nNo failing answer left a finding."
    parts = ["## Diagnosis", f"Top {min(MAX_FINDINGS, len(findings))} of {len(findings)} finding groups."]
    explained: set[str] = set()  # each dimension's actions are listed under its first finding
    for i, f in enumerate(findings[:MAX_FINDINGS], 1):
        n_answers = last.get("num_samples")
        where = f"in {f['count']} of {n_answers} answers" if n_answers else f"in {f['count']} answers"
        head = f"{i}. **{_cell(f['dimension'])}**: {_cell(f['finding'])} ({where}, {_pct(f['share'])})"
        if f.get("variants", 1) > 1:
            head += f"; {f['variants'] - 1} similar finding(s) in the group"
        if f.get("examples"):
            ex = f["examples"][0]
            shows = (
                f"\n   >\n   > *shows*: {_cell(ex['finding'])}"
                if ex.get("finding") not in (None, f["finding"])
                else ""
            )
            head += (
                f"\n   > **Q** ({_cell(ex.get('id'))}, {_cell(ex.get('area'))}): {_truncate(ex.get('question', ''))}"
                f"\n   >\n   > **A**: {_truncate(ex.get('answer', '')) or '(empty answer)'}{shows}"
            )
        changed = [] if f["dimension"] in explained else actions_on(last.get("actions") or [], f["dimension"])
        explained.add(f["dimension"])
        if changed:
            head += "\n\n   What the loop changed because of it:\n" + "\n".join(
                f"   - {_cell(a.get('reason', ''))}" for a in changed[:MAX_ACTIONS_PER_FINDING]
            )
            if len(changed) > MAX_ACTIONS_PER_FINDING:
                head += f"\n   - ... and {len(changed) - MAX_ACTIONS_PER_FINDING} more (see Actions)"
        parts.append(head)
    return "\n\n".join(parts)


def actions_on(actions: list[dict], dimension: str) -> list[dict]:
    """The loop's actions on `dimension`: its gain, one of its items (`dimension.<item>` targets), or
    an action that names it (`dimension` key: a mined phrase, a prompt drawn more often for its gate)."""
    return [
        a
        for a in actions
        if a.get("dimension") == dimension or str(a.get("target", "")).split(".")[0] == dimension
    ]


def _actions_section(last: dict) -> str:
    actions = last.get("actions") or []
    if not actions:
        return ""
    lines = []
    for a in actions:
        value = a.get("value")
        value = _num(value) if isinstance(value, float) else _cell(value)
        lines.append(
            f"- **{_cell(a.get('kind'))}** `{_cell(a.get('target'))}` → {value}: {_cell(a.get('reason', ''))}"
        )
    return "## Actions\n\n" + "\n".join(lines)


def write_report(
    history: list[dict],
    out_dir: str,
    weights: dict[str, list[tuple[int, float]]] | None = None,
    title: str = "Evaluation",
) -> str:
    """Write report.md, metrics.json and the PNG plots into out_dir; return the path of report.md."""
    if not history:
        raise ValueError("write_report needs at least one evaluation in history")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
        json.dump(_jsonable({"history": history, "weights": weights or {}}), fh, indent=2)
    plots = _plots(history, weights, out_dir)

    last = history[-1]
    intro = f"Step **{last['step']}** · {last.get('num_samples', '–')} answers"
    if len(history) > 1:
        intro += f" · evaluation {len(history)} of this run (first at step {history[0]['step']})"
    sections = [
        f"# {title}",
        intro,
        _dimension_section(history),
        _category_section(history),
        _area_section(last),
        _diagnosis_section(last),
        _actions_section(last),
        "## Plots\n\n" + "\n\n".join(f"![{caption}]({name})" for caption, name in plots),
    ]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n\n".join(s for s in sections if s) + "\n")
    return path
