"""Plots people would rather look at than read (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from maskfocus_cli.io.checkpoint import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _num(v: float | None) -> float:
    """A metrics value for plotting: null (no valid reward that iteration) is a gap."""
    return float("nan") if v is None else float(v)


def moving_average(values: list[float | None], window: int) -> list[float]:
    """Trailing mean over the finite values among the last ``window`` (one batch's reward is noisy; an
    iteration whose rewards were all invalid is a gap, not a NaN that blanks the curve from there on)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1):i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
    return out


def tag_series(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Per GenEval tag, (iterations, mean rollout reward) from metrics rows' ``reward_by_tag``."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in history:
        for tag, v in (r.get("reward_by_tag") or {}).items():
            xs, ys = out.setdefault(tag, ([], []))
            xs.append(r["iteration"])
            ys.append(v)
    return out


def reward_curve(history: list[dict], path: str | Path, title: str = "") -> None:
    """Reward mean ± std per iteration (and loss) from metrics rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    its = [r["iteration"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if history and "reward" in history[0]:
        mean = [_num(r["reward"]["mean"]) for r in history]
        axes[0].plot(its, mean, color="tab:blue", alpha=0.3, lw=1, label="batch mean")
        w = max(1, min(20, len(mean) // 10))
        smooth = moving_average(mean, w)
        axes[0].plot(its, smooth, color="tab:blue", lw=2, label=f"moving average ({w})")
        for tag, (x, y) in tag_series(history).items():  # which skills move (GenEval-tagged prompts)
            axes[0].plot(x, moving_average(y, max(w, 10)), lw=1, ls="--",
                         label=f"rollout: {tag} (moving average {max(w, 10)})")
        val = [(r["iteration"], _num(r["validation"]["reward"]["mean"])) for r in history if "validation" in r]
        if val:  # the standard sampler on fixed eval prompts: what `evaluate` would see
            axes[0].plot(*zip(*val), color="black", marker="o", ms=3, lw=1.5, label="validation (no routing)")
        axes[0].legend(loc="lower right", fontsize=7, ncol=2)
        axes[0].set_ylabel("reward")
    elif history and "token_accuracy" in history[0]:
        axes[0].plot(its, [r["token_accuracy"] for r in history], color="tab:blue")
        axes[0].set_ylabel("masked-token accuracy")
    axes[0].set_xlabel("iteration")
    axes[1].plot(its, [r.get("loss", float("nan")) for r in history], color="tab:red")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("loss")
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))


def compare_reward_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """Several runs' rewards (moving average) against wall time, and their KL: equal-budget comparisons
    are about reward per minute, so the x axis is minutes, not iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in runs.items():
        rows = [r for r in history if "reward" in r]
        if not rows:
            continue
        at = minutes_at_iteration(rows)
        minutes = [at[r["iteration"] + 1] for r in rows]
        mean = [_num(r["reward"]["mean"]) for r in rows]
        smooth = moving_average(mean, max(1, min(20, len(mean) // 10)))
        line, = axes[0].plot(minutes, smooth, lw=2, label=f"{label} ({len(rows)} it.)")
        axes[1].plot(minutes, [r.get("kl", float("nan")) for r in rows], lw=1, color=line.get_color())
    axes[0].set_xlabel("minutes (time in iterations)")
    axes[0].set_ylabel("rollout reward (moving average)")
    axes[0].legend(loc="best", fontsize=8)
    axes[1].set_xlabel("minutes (time in iterations)")
    axes[1].set_ylabel("KL to reference (per token)")
    axes[1].set_yscale("symlog", linthresh=0.01)
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))


def minutes_at_iteration(history: list[dict]) -> dict[int, float]:
    """Wall minutes spent when ``n`` iterations are done ({0: 0.0, n: ...}), from metrics rows' ``time.total``:
    checkpoint ``step-n`` is that moment, so held-out scores of checkpoints plot against time."""
    out, t = {0: 0.0}, 0.0
    for r in sorted((r for r in history if "iteration" in r), key=lambda r: r["iteration"]):
        t += r.get("time", {}).get("total", 0.0)
        out[r["iteration"] + 1] = t / 60
    return out


def heldout_curves(runs: dict[str, list[tuple[float, dict]]], path: str | Path, base: dict | None = None,
                   tags: tuple[str, ...] = ("counting", "position"), title: str = "") -> None:
    """Benchmark summaries of a run's checkpoints against wall time: the overall score (with base + 0.15, the
    "it learns" line, when ``base`` is given) and a few tags. Each run is a list of (minutes, summary)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["--", ":", "-.", (0, (1, 3))]
    for label, points in runs.items():
        points = sorted(([(0.0, base)] if base else []) + list(points), key=lambda p: p[0])
        xs = [m for m, _ in points]
        line, = axes[0].plot(xs, [s["overall"] for _, s in points], "o-", label=label)
        for tag, style in zip(tags, styles):
            axes[1].plot(xs, [s.get(tag, float("nan")) for _, s in points], linestyle=style, marker=".",
                         color=line.get_color(), label=f"{label}: {tag}")
    if base:
        axes[0].axhline(base["overall"] + 0.15, color="grey", lw=0.8, ls="--", label="base + 0.15")
    axes[0].set_xlabel("minutes (time in iterations)")
    axes[0].set_ylabel("benchmark overall")
    axes[0].legend(loc="best", fontsize=8)
    axes[1].set_xlabel("minutes (time in iterations)")
    axes[1].set_ylabel("benchmark tag score")
    axes[1].legend(loc="best", fontsize=7)
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))
