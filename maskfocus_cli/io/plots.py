"""Plots people would rather look at than read (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import io
from pathlib import Path

from maskfocus_cli.io.checkpoint import atomic_write_bytes


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reward_curve(history: list[dict], path: str | Path, title: str = "") -> None:
    """Reward mean ± std per iteration (and loss) from metrics rows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    its = [r["iteration"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if history and "reward" in history[0]:
        mean = [r["reward"]["mean"] for r in history]
        axes[0].plot(its, mean, color="tab:blue", alpha=0.3, lw=1, label="batch mean")
        w = max(1, min(20, len(mean) // 10))  # rewards of one batch are noisy: show a moving average
        smooth = [sum(mean[max(0, i - w + 1):i + 1]) / len(mean[max(0, i - w + 1):i + 1]) for i in range(len(mean))]
        axes[0].plot(its, smooth, color="tab:blue", lw=2, label=f"moving average ({w})")
        axes[0].legend(loc="lower right", fontsize=8)
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
