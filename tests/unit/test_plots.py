"""Plot helpers: the smoothing maths by hand, and that figures are written as PNGs."""

import math

import pytest

from maskfocus_cli.io.plots import (compare_reward_curves, heldout_curves, minutes_at_iteration, moving_average,
                                    reward_curve, tag_series)


def test_moving_average_by_hand():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert moving_average([3.0, 0.0, 3.0], 5) == pytest.approx([3.0, 1.5, 2.0])
    assert moving_average([2.0, 4.0], 1) == [2.0, 4.0]
    assert moving_average([], 3) == []
    # an iteration with no valid reward (null, or NaN) is a gap, not a NaN that blanks the curve from there on
    assert moving_average([0.5, None, 0.25, float("nan"), 1.0], 3) == pytest.approx([0.5, 0.5, 0.375, 0.25, 0.625])
    out = moving_average([None, 2.0], 1)
    assert out[0] != out[0] and out[1] == 2.0


def _history(n, slope):
    return [{"iteration": i, "reward": {"mean": 0.5 + slope * i, "std": 0.1}, "kl": 0.01 * i, "loss": 0.0,
             "time": {"total": 4.0}} for i in range(n)]


def test_tag_series_skips_iterations_without_the_tag():
    rows = [{"iteration": 0, "reward_by_tag": {"counting": 0.25, "position": 0.5}},
            {"iteration": 1, "reward_by_tag": {"counting": 0.75}}, {"iteration": 2}]
    assert tag_series(rows) == {"counting": ([0, 1], [0.25, 0.75]), "position": ([0], [0.5])}


def test_figures_are_png(tmp_path):
    compare_reward_curves({"maskfocus": _history(30, 0.01), "mask-grpo": _history(20, 0.0)}, tmp_path / "c.png")
    tagged = [dict(r, reward_by_tag={"counting": 0.1 * (i % 3)}) for i, r in enumerate(_history(10, 0.02))]
    tagged[4]["validation"] = {"reward": {"mean": 0.5, "std": 0.1}, "by_tag": {}}
    tagged[5]["reward"] = {"mean": None, "std": None}  # every reward of that iteration was invalid
    reward_curve(tagged, tmp_path / "r.png")
    summary = {"overall": 0.5, "counting": 0.25, "position": 0.5}
    heldout_curves({"maskfocus": [(3.0, summary), (1.0, dict(summary, overall=0.45))]}, tmp_path / "h.png",
                   base=dict(summary, overall=0.4))
    for name in ("c.png", "r.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_minutes_at_iteration_by_hand():
    rows = [{"iteration": 1, "time": {"total": 90.0}}, {"iteration": 0, "time": {"total": 30.0}},
            {"validation": {}}, {"iteration": 2, "time": {"total": 60.0}}]
    # step-n is the moment n iterations are done: 30 s, then 30 + 90 s, then + 60 s
    assert minutes_at_iteration(rows) == pytest.approx({0: 0.0, 1: 0.5, 2: 2.0, 3: 3.0})


def test_compare_script_names_runs_that_share_a_folder_name_by_their_parent(tmp_path):
    """runs/seed0/mf and runs/seed1/mf: one used to replace the other in the plot."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parents[2] / "scripts" / "compare_runs.py"
    for seed in ("seed0", "seed1"):
        run = tmp_path / seed / "mf"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _history(5, 0.01)))
    runs = [str(tmp_path / "seed0" / "mf"), str(tmp_path / "seed1" / "mf")]
    ok = subprocess.run([sys.executable, str(script), *runs, "--out", str(tmp_path / "c.png")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    same = subprocess.run([sys.executable, str(script), *runs, "--labels", "a,a", "--out", str(tmp_path / "d.png")],
                          capture_output=True, text=True)
    assert same.returncode == 2 and "two runs share the label 'a'" in same.stderr


def test_what_the_panels_leave_out_by_hand():
    from maskfocus_cli.bench.report import overall_stderr, precision_line
    from maskfocus_cli.io.plots import kl_series, loss_series, smoothing_window
    rows = [{"iteration": 0, "loss": 0.5, "kl": 0.0, "kept": 8}, {"iteration": 1, "loss": 0.0, "kl": 0.0, "kept": 0},
            {"iteration": 2, "loss": 0.25, "kl": 0.01, "kept": 4}]
    loss = loss_series(rows)
    assert loss[0] == 0.5 and math.isnan(loss[1]) and loss[2] == 0.25  # no group kept: a gap, not a 0 loss
    kl = kl_series(rows)
    assert kl[0] == 0.0 and math.isnan(kl[1]) and kl[2] == 0.01
    assert kl_series([dict(r, kl=0.0) for r in rows]) is None  # no KL term (Mask-GRPO): not drawn as 0
    assert loss_series([{"iteration": 0, "loss": 1.5}]) == [1.5]  # pretraining rows have no "kept"
    assert smoothing_window(12) == 1 and smoothing_window(95) == 9 and smoothing_window(1000) == 20
    # two tags: 1/2 and 3/4 correct; smoothed p = 2/4 and 4/6 -> s.e. sqrt(0.25/2 + (2/9)/4) / 2
    summary = {"counts": {"a": {"correct": 1, "total": 2}, "b": {"correct": 3, "total": 4}, "c": {"correct": 0,
                                                                                                "total": 0}}}
    assert overall_stderr(summary) == pytest.approx(math.sqrt(0.25 / 2 + (2 / 9) / 4) / 2)
    assert overall_stderr({"counts": {"a": {"correct": 4, "total": 4}}}) > 0  # 4/4 is not certainty
    assert overall_stderr({"overall": 0.5}) is None
    line = precision_line({**summary, "bench": "shapes"})
    assert line.startswith("images per tag: 2–4 · overall ± 0.212 binomial s.e.") and "closer than ~0.60" in line
