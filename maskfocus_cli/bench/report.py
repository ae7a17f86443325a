"""Benchmark reports: the papers' tables on a rich console, summary.json I/O, run-vs-run deltas.

GenEval-style summaries (benches ``geneval`` and ``shapes``) are shown as the
GenEval paper does: Overall, then the six tags, two decimals. T2I-CompBench
summaries show the categories the run scored (of its eight), in the paper's
order, with four decimals. ``compare_table`` puts two runs of the same bench in
one table with a row of deltas, so a base model and its RL checkpoint can be
read side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from maskfocus_cli.bench.geneval import TAG_TITLES, TAGS
from maskfocus_cli.bench.prompts import T2I_COMPBENCH_CATEGORIES
from maskfocus_cli.io.checkpoint import atomic_write_json

GENEVAL_LIKE = ("geneval", "shapes")
T2I_TITLES: dict[str, str] = {
    "color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "2D-Spatial",
    "3d_spatial": "3D-Spatial", "non_spatial": "Non-Spatial", "numeracy": "Numeracy", "complex": "Complex",
}


# ------------------------------------------------------------------ summary I/O
def write_summary(path: str | Path, summary: dict) -> Path:
    """Write summary.json atomically (an interrupted run never leaves half a file)."""
    path = Path(path)
    atomic_write_json(path, summary)
    return path


def read_summary(path: str | Path) -> dict:
    """Read a summary.json written by ``maskfocus evaluate``; ValueError names the problem."""
    p = Path(path)
    if p.is_dir():
        p = p / "summary.json"
    if not p.is_file():
        raise ValueError(f"summary file not found: {path} (pass the summary.json of an earlier evaluate run)")
    try:
        summary = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a JSON summary ({e})") from None
    if not isinstance(summary, dict) or "bench" not in summary:
        raise ValueError(f"{p}: not a summary written by `maskfocus evaluate` (no 'bench' field)")
    return summary


# ------------------------------------------------------------------ columns
def metric_columns(summary: dict, also: tuple[str, ...] = ()) -> list[tuple[str, str, float | None]]:
    """(key, title, value) of the paper's columns for this summary; value None = not scored.

    GenEval: Overall and all six tags. T2I-CompBench: the categories this run
    scored (plus ``also``, for side-by-side tables), in the paper's order.
    """
    bench = summary.get("bench")
    if bench in GENEVAL_LIKE:
        tags = [t for t in TAGS] + sorted(t for t in summary.get("counts", {}) if t not in TAGS)
        cols: list[tuple[str, str, float | None]] = [("overall", "Overall", summary.get("overall"))]
        cols += [(t, TAG_TITLES.get(t, t), summary.get(t)) for t in tags]
        return cols
    if bench == "t2i-compbench":  # categories scored in this run, in the paper's order
        cats = [c for c in T2I_COMPBENCH_CATEGORIES if c in summary or c in also]
        return [(c, T2I_TITLES[c], summary.get(c)) for c in cats]
    raise ValueError(f"unknown bench {bench!r} in summary (expected geneval, shapes or t2i-compbench)")


def _digits(summary: dict) -> int:
    return 4 if summary.get("bench") == "t2i-compbench" else 2


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _fmt_delta(d: float | None, digits: int) -> str:
    if d is None:
        return "-"
    text = f"{d:+.{digits}f}"
    if round(d, digits) == 0:
        return text
    return f"[green]{text}[/green]" if d > 0 else f"[red]{text}[/red]"


def run_label(summary: dict) -> str:
    """Short name of a run for table rows: checkpoint, else model, else images folder."""
    for key in ("checkpoint", "model", "images_dir"):
        if summary.get(key):
            return str(summary[key])
    return summary.get("bench", "run")


def row_labels(current: dict, other: dict, labels: tuple[str, str] | None = None) -> tuple[str, str]:
    """The two rows' names of a side-by-side table (terminal and markdown alike): ``labels`` (the CLI
    passes the runs' folder names), else each run's ``run_label``."""
    return labels or (run_label(current), run_label(other))


# ------------------------------------------------------------------ tables
def summary_table(summary: dict, title: str | None = None) -> Table:
    """One run, one row: the paper's columns (the run is named in the title)."""
    digits = _digits(summary)
    cols = metric_columns(summary)
    table = Table(title=title or f"{_title(summary)}: {run_label(summary)}", title_justify="left")
    for _, name, _ in cols:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row(*(_fmt(v, digits) for _, _, v in cols))
    return table


def pass_line(summary: dict) -> str | None:
    """GenEval-like runs with several images per prompt: pass@n per tag in one line (None otherwise).

    A prompt passes if any of its n images is correct; pass@n above the table's accuracy is what the
    model already draws in some samples — the headroom RL post-training sharpens towards.
    """
    pass_at, n = summary.get("pass_at_n"), summary.get("images_per_row")
    if summary.get("bench") not in GENEVAL_LIKE or not pass_at or n == 1:
        return None
    label = f"pass@{n}" if n else "pass@n"
    cols = [("overall", "Overall")] + [(t, TAG_TITLES.get(t, t)) for t in pass_at if t != "overall"]
    return f"{label} (a prompt passes if any of its {n or 'n'} images is correct): " + " · ".join(
        f"{name} {pass_at[key]:.2f}" for key, name in cols)


def overall_stderr(summary: dict) -> float | None:
    """Standard error of a GenEval-style overall score (the mean of per-tag accuracies over T tags):
    sqrt(Σ_t p̃_t (1 − p̃_t) / n_t) / T from the summary's per-tag counts, with p̃ = (correct + 1) / (n + 2) so
    that a tag at 0/4 or 4/4 does not count as exact; None without counts. Two runs closer than ~2 of these are
    not told apart by the bench."""
    counts = [c for c in (summary.get("counts") or {}).values() if isinstance(c, dict) and c.get("total")]
    if not counts:
        return None
    var = 0.0
    for c in counts:
        p = (c["correct"] + 1) / (c["total"] + 2)
        var += p * (1 - p) / c["total"]
    return math.sqrt(var) / len(counts)


def precision_line(summary: dict) -> str | None:
    """How many images each tag's accuracy rests on, and the overall's standard error: with 4 images a tag,
    ±0.25 is one image, not a finding."""
    totals = [c["total"] for c in (summary.get("counts") or {}).values() if isinstance(c, dict) and c.get("total")]
    se = overall_stderr(summary)
    if summary.get("bench") not in GENEVAL_LIKE or not totals or se is None:
        return None
    each = f"{totals[0]}" if len(set(totals)) == 1 else f"{min(totals)}–{max(totals)}"
    # two runs' difference has s.e. √2·se: ~2 of those before a difference means anything
    return (f"images per tag: {each} · overall ± {se:.3f} binomial s.e. (a lower bound: a prompt's images are "
            f"alike); two runs closer than ~{2 * math.sqrt(2) * se:.2f} are not told apart")


def _title(summary: dict) -> str:
    bench = summary.get("bench", "")
    name = {"geneval": "GenEval", "shapes": "GenEval rules on the shapes world",
            "t2i-compbench": "T2I-CompBench"}.get(bench, bench)
    n = summary.get("images")
    return f"{name}" + (f" ({n} images)" if n is not None else "")


def compare_table(current: dict, other: dict, labels: tuple[str, str] | None = None) -> Table:
    """Two runs of the same bench side by side, plus a Δ row (current − other)."""
    if current.get("bench") != other.get("bench"):
        raise ValueError(f"cannot compare a {current.get('bench')!r} run with a {other.get('bench')!r} run "
                         f"(--compare needs a summary.json of the same --bench)")
    digits = _digits(current)
    a = metric_columns(current, also=tuple(k for k, _, _ in metric_columns(other)))
    b = metric_columns(other)
    values_b = {k: v for k, _, v in b}
    table = Table(title=_title(current) + " vs earlier run", title_justify="left")
    table.add_column("Run", overflow="ellipsis", no_wrap=True, max_width=20)
    for _, name, _ in a:
        table.add_column(name, justify="right", no_wrap=True)
    la, lb = row_labels(current, other, labels)
    table.add_row(la, *(_fmt(v, digits) for _, _, v in a))
    table.add_row(lb, *(_fmt(values_b.get(k), digits) for k, _, _ in a))
    deltas = [None if v is None or values_b.get(k) is None else v - values_b[k] for k, _, v in a]
    table.add_row("Δ", *(_fmt_delta(d, digits) for d in deltas))
    return table


def markdown_table(summary: dict, command: str | None = None, other: dict | None = None,
                   labels: tuple[str, str] | None = None) -> str:
    """The summary (and optionally an earlier run with deltas) as a markdown table, for docs/; rows are
    named as in ``compare_table`` (same ``labels``)."""
    digits = _digits(summary)
    cols = metric_columns(summary, also=tuple(k for k, _, _ in metric_columns(other)) if other else ())
    la, lb = row_labels(summary, other, labels) if other is not None else (run_label(summary), "")
    lines = [f"{_title(summary)}: `{run_label(summary)}`", "",
             "| Run | " + " | ".join(name for _, name, _ in cols) + " |",
             "|---|" + "---:|" * len(cols),
             f"| {la} | " + " | ".join(_fmt(v, digits) for _, _, v in cols) + " |"]
    if other is not None:
        values = {k: v for k, _, v in metric_columns(other)}
        lines.append(f"| {lb} | " + " | ".join(_fmt(values.get(k), digits) for k, _, _ in cols) + " |")
        ds = [None if v is None or values.get(k) is None else v - values[k] for k, _, v in cols]
        lines.append("| Δ | " + " | ".join("-" if d is None else f"{d:+.{digits}f}" for d in ds) + " |")
    if (line := precision_line(summary)) is not None:
        lines += ["", line[0].upper() + line[1:] + "."]
    if command:
        lines += ["", f"Regenerate: `{command}`"]
    return "\n".join(lines) + "\n"


#: what must match for a Δ row to compare models rather than samples (the model itself may differ)
SAME_SAMPLES = ("images", "prompts", "images_per_row", "seed", "sampler", "routing", "batch_size")


def sample_differences(current: dict, other: dict) -> list[str]:
    """'key: this vs other' for the facts of the two runs' samples that differ (empty: comparable). Facts
    only one run knows (a run scoring existing images has no sampler or seed) are not held against it."""
    a, b = dict(current), dict(other)
    if a.get("sampler") is not None and b.get("sampler") is not None:  # both generated: no key = not routed
        a["routing"], b["routing"] = bool(a.get("routing")), bool(b.get("routing"))
        from maskfocus_cli.engine.settings import with_added_fields
        a["sampler"], b["sampler"] = with_added_fields(a["sampler"]), with_added_fields(b["sampler"])
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in SAME_SAMPLES
            if a.get(k) != b.get(k) and (k in ("images", "prompts") or None not in (a.get(k), b.get(k)))]


def deltas(current: dict, other: dict) -> dict[str, float | None]:
    """Per column: current − other (None where either run did not score it)."""
    values_b = {k: v for k, _, v in metric_columns(other)}
    cols = metric_columns(current, also=tuple(values_b))
    return {k: (None if v is None or values_b.get(k) is None else v - values_b[k]) for k, _, v in cols}
