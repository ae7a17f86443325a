"""Experiment trackers: `output.log_with` feeds TensorBoard (through accelerate) the rows metrics.jsonl holds."""

import json

import pytest
from click.testing import CliRunner

from maskfocus_cli.cli import main
from maskfocus_cli.config import TRACKERS
from maskfocus_cli.engine import trackers

from test_train import recipe_file


def test_rows_become_flat_scalars_and_the_recipe_flat_text():
    row = {"reward": {"mean": 0.5, "std": None}, "components": {"clip": {"mean": 0.25, "std": 0.1}},
           "loss": -0.125, "kl": float("nan"), "steps": [0, 3], "kept": 6, "terminated": True,
           "time": {"rollout": 1.5}}
    assert trackers.scalars(row) == {"reward/mean": 0.5, "components/clip/mean": 0.25, "components/clip/std": 0.1,
                                     "loss": -0.125, "kept": 6, "terminated": 1.0, "time/rollout": 1.5}
    hp = trackers.hyperparameters({"train": {"lr": 1e-4, "betas": [0.9, 0.95]}, "output": {"tracker_project": None},
                                   "rewards": [{"name": "clip"}]})
    assert hp == {"train/lr": 1e-4, "train/betas": "[0.9, 0.95]", "output/tracker_project": "null",
                  "rewards": '[{"name": "clip"}]'}


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    found = {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f.parent), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["images"]:
            found.setdefault(f"image:{tag}", {}).update({e.step: (e.width, e.height) for e in acc.Images(tag)})
    return found


def hparams(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    found = []
    for folder in sorted({f.parent for f in (run / "trackers").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams").values()
        except KeyError:  # a folder without hyper-parameters (the scalars' own)
            continue
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                found.append(data.session_start_info.hparams)
    return found


def test_train_logs_rows_grids_and_recipe_to_tensorboard_and_a_resume_continues_the_tracker_run(
        tmp_path, tiny_shapes_dir):
    pytest.importorskip("tensorboard")
    p = recipe_file(tmp_path, tiny_shapes_dir, out="tb")
    sets = ["--set", "output.log_with=tensorboard", "--set", "output.sample_every=1",
            "--set", "output.tracker_project=shapes-test"]
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=1", *sets])
    assert res.exit_code == 0, res.output
    first_id = json.loads((tmp_path / "tb" / "tracker.json").read_text())["run_id"]
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=2", *sets, "--resume", "latest"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "tb" / "tracker.json").read_text())["run_id"] == first_id
    rows = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    logged = events(tmp_path / "tb" / "trackers" / "shapes-test")
    for key in ("reward/mean", "loss", "kl", "zero_std_ratio", "time/rollout", "lr"):
        top, _, sub = key.partition("/")
        want = {r["iteration"]: (r[top][sub] if sub else r[top]) for r in rows}
        assert set(logged[key]) == {0, 1}, key
        assert all(abs(logged[key][s] - v) <= 1e-6 * max(1.0, abs(v)) for s, v in want.items()), key
    assert set(logged["image:samples"]) == {1, 2}  # the grid after each iteration (sample_every: 1)
    assert all(w > 0 and h > 0 for w, h in logged["image:samples"].values())
    # the recipe went in as hyper-parameters (TensorBoard's hparams plugin), once per start
    assert [(h["train/lr"].number_value, h["train/algorithm"].string_value) for h in hparams(tmp_path / "tb")] \
        == [(1e-3, "maskfocus")] * 2
    # a fresh run elsewhere is another tracker run
    res = CliRunner().invoke(main, ["train", str(p), "--set", "train.iterations=1", *sets,
                                    "--out", str(tmp_path / "tb2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "tb2" / "tracker.json").read_text())["run_id"] != first_id


def test_a_tracker_that_is_unknown_or_not_installed_is_refused_before_training(tmp_path, tiny_shapes_dir,
                                                                              monkeypatch):
    p = recipe_file(tmp_path, tiny_shapes_dir, out="bad")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "output.log_with=[tensorboard, neptune]"])
    assert res.exit_code == 2 and "output.log_with: 'neptune' is not one of tensorboard" in res.output, res.output
    assert "Traceback" not in res.output
    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb")
    res = CliRunner().invoke(main, ["train", str(p), "--set", "output.log_with=wandb"])
    assert res.exit_code == 2, res.output
    assert "output.log_with: wandb is not installed (pip install wandb)" in res.output
    assert not (tmp_path / "bad").exists()
    assert set(TRACKERS) >= {"tensorboard", "wandb", "mlflow"}
