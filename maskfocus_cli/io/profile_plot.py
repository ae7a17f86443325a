"""profile.png: similarity and gain curves with critical steps marked, above a strip of x̂0 per step.

The strip shares the step axis with the curves (column t is step t), so one can
see which steps change the image and whether those are the ones marked critical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import io

import numpy as np

from maskfocus_cli.io.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from maskfocus_cli.engine.profile import ProfileResult


def strip_array(strips: list, pad: int = 2) -> np.ndarray:
    """R lists of (T, 3, h, w) thumbnails → one (R·(h+2p), T·(w+2p), 3) float image, white gutters."""
    t, _, h, w = strips[0].shape
    cell_h, cell_w = h + 2 * pad, w + 2 * pad
    out = np.ones((len(strips) * cell_h, t * cell_w, 3), dtype=np.float32)
    for r, s in enumerate(strips):
        arr = s.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # (T, h, w, 3)
        for c in range(t):
            out[r * cell_h + pad:r * cell_h + pad + h, c * cell_w + pad:c * cell_w + pad + w] = arr[c]
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _label(text: str, width: int = 30, lines: int = 2) -> str:
    """A prompt as a strip label: wrapped, not cut (the end of "a green triangle left of a yellow cross" is
    the part that matters); only a prompt longer than ``lines`` lines is shortened."""
    import textwrap
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][:width - 1] + "…"
    return "\n".join(wrapped)


def write_profile_plot(result: "ProfileResult", path: str | Path, title: str = "") -> None:
    """Render the profile figure and write it atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    from maskfocus_cli.engine.critical import candidate_steps

    T = result.steps
    n_candidates = candidate_steps(T, result.top_k)
    steps = np.arange(T)
    per_sim = np.stack([p.similarity.mean(0).numpy() for p in result.prompts])
    per_gain = np.stack([p.batch_gain.numpy() for p in result.prompts])
    crit = result.critical_steps.tolist()
    freq = result.selection_frequency.numpy()
    strips = [p for p in result.prompts if p.strip is not None]

    width = float(np.clip(0.42 * T, 8.0, 24.0))
    col_w = width / T  # inches per step column
    strip_h = col_w * len(strips) * 1.05 if strips else 0.0
    heights = [2.4, 2.4] + ([max(strip_h, 0.6)] if strips else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(width, sum(heights) + 0.6), sharex=True,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    ax_s, ax_g = axes[0], axes[1]

    for ax in (ax_s, ax_g):
        for t in crit:
            ax.axvspan(t - 0.5, t + 0.5, color="tab:red", alpha=0.12, lw=0)
        if n_candidates < T:  # the last steps only finish a grid that is already decided: never selected
            ax.axvspan(n_candidates - 0.5, T - 0.5, facecolor="none", edgecolor="tab:gray", hatch="//", alpha=0.4,
                       lw=0)
        ax.grid(alpha=0.3)

    mean_s, sd_s = per_sim.mean(0), per_sim.std(0)
    ax_s.plot(steps, mean_s, color="tab:blue", marker="o", ms=3, label="similarity to final (mean over prompts)")
    ax_s.fill_between(steps, mean_s - sd_s, mean_s + sd_s, color="tab:blue", alpha=0.2, lw=0,
                      label="± 1 s.d. over prompts")
    ax_s.set_ylabel(r"$\cos(e_t,\ e_{\mathrm{final}})$")
    handles, labels = ax_s.get_legend_handles_labels()
    handles.append(Patch(color="tab:red", alpha=0.12, lw=0))
    labels.append(f"recommended critical steps (top-{result.top_k})")
    if n_candidates < T:
        handles.append(Patch(facecolor="none", edgecolor="tab:gray", hatch="//", alpha=0.4, lw=0))
        labels.append(f"not candidates (steps {n_candidates}–{T - 1})")
    ax_s.legend(handles, labels, loc="lower right", fontsize=8)

    mean_g = per_gain.mean(0)
    ax_f = ax_g.twinx()
    ax_f.bar(steps, freq, width=0.8, color="tab:gray", alpha=0.3, label="prompts selecting the step")
    ax_f.set_ylabel("times selected")
    ax_f.set_ylim(0, max(1, len(result.prompts)) * 1.05)
    ax_g.set_zorder(ax_f.get_zorder() + 1)
    ax_g.patch.set_visible(False)
    ax_g.plot(steps, mean_g, color="tab:orange", marker="o", ms=3, label="information gain (mean)")
    ax_g.plot(crit, mean_g[crit], ls="none", marker="*", ms=13, color="tab:red",
              label=f"critical steps (top-{result.top_k})")
    ax_g.set_ylabel(r"gain $|s_{t+1} - s_t|$")
    handles, labels = ax_g.get_legend_handles_labels()
    bars, bar_labels = ax_f.get_legend_handles_labels()
    ax_g.legend(handles + bars, labels + bar_labels, loc="upper right", fontsize=8)
    ax_g.set_xlim(-0.5, T - 0.5)

    if strips:
        ax_i = axes[2]
        ax_i.imshow(strip_array([p.strip for p in strips]), extent=(-0.5, T - 0.5, len(strips), 0),
                    aspect="auto", interpolation="nearest")
        for r, p in enumerate(strips):
            for t in p.critical.tolist():
                ax_i.add_patch(Rectangle((t - 0.5, r), 1, 1, fill=False, ec="tab:red", lw=1.5))
        ax_i.set_yticks(np.arange(len(strips)) + 0.5)
        ax_i.set_yticklabels([_label(p.prompt) for p in strips], fontsize=7)
        ax_i.set_xlabel("step (strip: decoded x̂0 of image 0; red = this prompt's critical steps)")
    else:
        ax_g.set_xlabel("step")
    ticks = steps if T <= 32 else steps[::max(1, T // 16)]
    axes[-1].set_xticks(ticks)
    fig.suptitle(title or f"step profile: T={T}, {len(result.prompts)} prompts, critical steps {crit}",
                 fontsize=10)
    atomic_write_bytes(path, _png(fig))
