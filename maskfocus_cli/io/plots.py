"""Plots people would rather look at than read (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import io
import math
from pathlib import Path

from maskfocus_cli.bench.report import overall_stderr
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


def updated(row: dict) -> bool:
    """Whether an RL iteration updated the policy: with no rollout group kept (every group's rewards alike)
    there is no loss and no KL to show, only a gap (drawn as 0 they read as a measurement)."""
    return row.get("kept", 1) > 0


def loss_series(history: list[dict]) -> list[float]:
    return [_num(r.get("loss")) if updated(r) else float("nan") for r in history]


def kl_series(history: list[dict]) -> list[float] | None:
    """KL to the reference per iteration, or None for a run without a KL term (``kl`` is logged as 0.0 there:
    drawn, it would read as a policy that never moved)."""
    kl = [_num(r.get("kl")) if updated(r) else float("nan") for r in history]
    return kl if any(math.isfinite(v) and v != 0.0 for v in kl) else None


def _scale_for_spikes(ax, values) -> None:
    """Linear, unless a few spikes (a KL of 100 in a run that sits at 0.01) would flatten the rest: then
    symlog, linear up to the typical value."""
    finite = sorted(abs(float(v)) for v in values if math.isfinite(float(v)))
    if not finite:
        return
    typical = finite[len(finite) // 2]
    if typical > 0 and finite[-1] > 50 * typical:
        ax.set_yscale("symlog", linthresh=typical)


def smoothing_window(n: int) -> int:
    """Trailing window for a curve of ``n`` points: ~a tenth of the run, 1 (no smoothing) for short runs."""
    return max(1, min(20, n // 10))


def reward_curve(history: list[dict], path: str | Path, title: str = "") -> None:
    """reward.png: the rollout reward (batch means and their moving average) with the validation reward, the
    rollout reward per GenEval tag, and the loss with the KL to the reference; for pretraining, token
    accuracy and loss. Each panel has its own legend, clear of the curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    its = [r["iteration"] for r in history]
    rl = bool(history) and "reward" in history[0]
    tags = tag_series(history) if rl else {}
    fig, axes = plt.subplots(1, 3 if tags else 2, figsize=(15 if tags else 10, 3.8))
    if rl:
        mean = [_num(r["reward"]["mean"]) for r in history]
        w = smoothing_window(len(mean))
        axes[0].plot(its, mean, color="tab:blue", alpha=0.35 if w > 1 else 1.0, lw=1,
                     label="rollout batch mean" + (" (routed)" if any("explore_fraction" in r and
                                                                     r["explore_fraction"] for r in history) else ""))
        if w > 1:
            axes[0].plot(its, moving_average(mean, w), color="tab:blue", lw=2, label=f"moving average of {w}")
        val = [(r["iteration"], _num(r["validation"]["reward"]["mean"])) for r in history if "validation" in r]
        if val:  # the standard sampler on fixed eval prompts: what `evaluate` would see
            axes[0].plot(*zip(*val), color="black", marker="o", ms=3, lw=1.5, label="validation (standard sampler)")
        axes[0].set_ylabel("reward")
        axes[0].set_title("reward", fontsize=10)
        axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=3, frameon=False)
        if tags:
            tw = max(1, min(10, max(len(y) for _, y in tags.values()) // 5))
            colors = plt.get_cmap("tab10")
            for k, (tag, (x, y)) in enumerate(sorted(tags.items())):
                axes[1].plot(x, moving_average(y, tw), lw=1.2, marker="." if len(x) < 30 else None,
                             color=colors(k + 1), label=tag)
            axes[1].set_ylabel("rollout reward" + (f" (moving average of {tw})" if tw > 1 else ""))
            axes[1].set_title("rollout reward by GenEval tag", fontsize=10)
            axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=3, frameon=False)
    elif history and "token_accuracy" in history[0]:
        axes[0].plot(its, [r["token_accuracy"] for r in history], color="tab:blue")
        axes[0].set_ylabel("masked-token accuracy")
    for ax in axes:
        ax.set_xlabel("iteration (from 0)")
    ax = axes[-1]
    ax.plot(its, loss_series(history), color="tab:red", lw=1, label="loss")
    ax.set_ylabel("loss", color="tab:red")
    ax.set_title("loss" + (" and KL" if rl else "") + (" (gaps: no group kept, no update)" if rl else ""),
                 fontsize=10)
    kl = kl_series(history) if rl else None
    if kl is not None:
        twin = ax.twinx()
        twin.plot(its, kl, color="tab:purple", lw=2.5, alpha=0.45, label="KL to reference (right axis)")
        twin.set_ylabel("KL to reference (per token)", color="tab:purple")
        _scale_for_spikes(twin, kl)
        ax.set_zorder(twin.get_zorder() + 1)  # the loss on top: with the KL term it often tracks the KL's shape
        ax.patch.set_visible(False)
        ax.legend(ax.get_lines() + twin.get_lines(), ["loss", "KL to reference (right axis)"],
                  loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write_bytes(path, _figure_bytes(fig))


def compare_reward_curves(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """Several runs' rewards (moving average) against wall time, and their KL: equal-budget comparisons
    are about reward per minute, so the x axis is minutes, not iterations. Rollout rewards of routed and
    unrouted runs are not alike (routed rollouts explore); the validation reward, where logged, is."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    windows = set()
    for label, history in runs.items():
        rows = [r for r in history if "reward" in r]
        if not rows:
            continue
        at = minutes_at_iteration(rows)
        minutes = [at[r["iteration"] + 1] for r in rows]
        mean = [_num(r["reward"]["mean"]) for r in rows]
        w = smoothing_window(len(mean))
        windows.add(w)
        routed = any(r.get("explore_fraction") for r in rows)
        line, = axes[0].plot(minutes, moving_average(mean, w), lw=2,
                             label=f"{label} ({len(rows)} it.{', routed' if routed else ''})")
        val = [(at[r["iteration"] + 1], _num(r["validation"]["reward"]["mean"])) for r in history
               if "validation" in r and r.get("iteration") is not None and r["iteration"] + 1 in at]
        if val:
            axes[0].plot(*zip(*val), "o", ms=3, color=line.get_color())
        kl = kl_series(rows)
        if kl is not None:
            axes[1].plot(minutes, kl, lw=1, color=line.get_color(), label=label)
        else:
            axes[1].plot([], [], lw=1, color=line.get_color(), label=f"{label}: no KL term")
    smooth = f"moving average of {windows.pop()}" if len(windows) == 1 else "moving average, ~a tenth of each run"
    axes[0].set_xlabel("wall-clock minutes")
    axes[0].set_ylabel(f"rollout reward ({smooth})\ndots: validation reward", fontsize=9)
    axes[0].legend(loc="best", fontsize=8)
    axes[1].set_xlabel("wall-clock minutes")
    axes[1].set_ylabel("KL to reference (per token)")
    _scale_for_spikes(axes[1], [v for line in axes[1].get_lines() for v in line.get_ydata()])
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
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
    """Benchmark summaries of a run's checkpoints against wall time: the overall score with its standard error
    (and base + 0.15, the "it learns" line, when ``base`` is given) and a few tags. Each run is a list of
    (minutes, summary)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = ["--", ":", "-.", (0, (1, 3))]
    for label, points in runs.items():
        points = sorted(([(0.0, base)] if base else []) + list(points), key=lambda p: p[0])
        xs = [m for m, _ in points]
        errs = [overall_stderr(s) for _, s in points]
        line = axes[0].errorbar(xs, [s["overall"] for _, s in points],
                                yerr=[e or 0.0 for e in errs] if any(errs) else None, fmt="o-", ms=4,
                                capsize=2, lw=1.5, label=label)
        color = line.lines[0].get_color()
        for tag, style in zip(tags, styles):
            axes[1].plot(xs, [s.get(tag, float("nan")) for _, s in points], linestyle=style, marker=".",
                         color=color, label=f"{label}: {tag}")
    if base:
        axes[0].plot([0.0], [base["overall"]], "s", color="black", ms=6, label="base", zorder=5)
        axes[0].axhline(base["overall"] + 0.15, color="grey", lw=0.8, ls="--", label="base + 0.15")
    top = max([1e-9] + [s["overall"] for pts in runs.values() for _, s in pts]
              + ([base["overall"] + 0.15] if base else []))
    axes[0].set_ylim(0.0, min(1.0, top + 0.1))  # from 0: a change of one image must not look like a collapse
    axes[0].set_xlabel("wall-clock minutes of training")
    axes[0].set_ylabel("benchmark overall (± binomial s.e.)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].set_xlabel("wall-clock minutes of training")
    axes[1].set_ylabel("benchmark tag score")
    axes[1].set_ylim(0.0, 1.0)
    axes[1].legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write_bytes(path, _figure_bytes(fig))
