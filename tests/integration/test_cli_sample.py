"""`maskfocus sample` end to end through click's runner."""

import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from maskfocus_cli.cli import main

PROMPT = "a photo of a red circle left of a blue square"


def run(*args, input=None):
    return CliRunner().invoke(main, list(map(str, args)), input=input)


def lines(res):
    return [json.loads(l) for l in res.stdout.splitlines()]


def test_sample_writes_images_and_json(tmp_path, tiny_shapes_dir):
    res = run("sample", PROMPT, "--n", 4, "--steps", 4, "--model", f"shapes:{tiny_shapes_dir}", "--out",
              tmp_path / "out", "--grid")
    assert res.exit_code == 0, res.output
    rows = lines(res)
    assert len(rows) == 4
    assert [r["seed"] for r in rows] == [0, 1, 2, 3]
    for r in rows:
        assert r["prompt"] == PROMPT and r["steps"] == 4
        with Image.open(r["path"]) as im:
            assert im.size == (64, 64)
    assert (tmp_path / "out" / "grid.png").is_file()


def test_stdin_pipeline(tmp_path, tiny_shapes_dir):
    res = run("sample", "--prompts", "-", "--steps", 3, "--model", f"shapes:{tiny_shapes_dir}", "--out",
              tmp_path / "o", input="a photo of two green triangles\n\n")
    assert res.exit_code == 0, res.output
    assert [r["prompt"] for r in lines(res)] == ["a photo of two green triangles"]


def test_same_seed_same_bytes_any_batch_size(tmp_path, tiny_shapes_dir):
    prompts = ["a photo of a circle", "a photo of two green triangles", PROMPT]
    outs = {}
    for bs in (1, 16):
        res = run("sample", *prompts, "--n", 3, "--steps", 5, "--batch-size", bs, "--model",
                  f"shapes:{tiny_shapes_dir}", "--out", tmp_path / f"bs{bs}")
        assert res.exit_code == 0, res.output
        outs[bs] = [open(r["path"], "rb").read() for r in lines(res)]
    assert outs[1] == outs[16]


def test_a_repeated_prompt_gets_new_seeds_not_copies(tmp_path, tiny_shapes_dir):
    other = "a photo of a circle"
    res = run("sample", PROMPT, other, PROMPT, "--n", 2, "--seed", 5, "--steps", 3, "--model",
              f"shapes:{tiny_shapes_dir}", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    rows = lines(res)
    # k-th listing of a prompt: seeds seed + k·n + j
    assert [(r["prompt"], r["seed"]) for r in rows] == [(PROMPT, 5), (PROMPT, 6), (other, 5), (other, 6),
                                                        (PROMPT, 7), (PROMPT, 8)]
    assert open(rows[0]["path"], "rb").read() != open(rows[4]["path"], "rb").read()


def test_geneval_layout_and_routing(tmp_path, tiny_shapes_dir):
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps({"tag": "counting", "include": [{"class": "circle", "count": 2}],
                                "exclude": [{"class": "circle", "count": 3}],
                                "prompt": "a photo of two circles"}) + "\n")
    res = run("sample", "--prompts", meta, "--n", 2, "--steps", 4, "--layout", "geneval", "--routing",
              "--model", f"shapes:{tiny_shapes_dir}", "--out", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g" / "00000" / "samples" / "0001.png").is_file()
    assert json.loads((tmp_path / "g" / "00000" / "metadata.jsonl").read_text())["tag"] == "counting"
    assert all(0.0 <= r["explore_fraction"] <= 1.0 for r in lines(res))


def test_bad_input(tmp_path, tiny_shapes_dir):
    model = f"shapes:{tiny_shapes_dir}"
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_shapes_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["sample", "--prompts", "-", "--model", model], "", "no prompts"),
        (["sample", "a photo of a red dragon", "--model", model], None, "dragon"),
        (["sample", PROMPT, "--model", model, "--checkpoint", tmp_path / "nope"], None, "checkpoint not found"),
        (["sample", PROMPT, "--model", model, "--checkpoint", corrupt], None, "safetensors"),
        (["sample", PROMPT, "--model", model, "--steps", 0], None, "--steps"),
        (["sample", PROMPT, "--model", model, "--out", blocker / "sub"], None, "cannot write"),
        (["sample", PROMPT, "--model", "dalle"], None, "unknown model spec"),
        (["sample", "--prompts", tmp_path / "missing.txt", "--model", model], None, "not found"),
    ]
    for args, stdin, message in cases:
        res = run(*args, input=stdin)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
