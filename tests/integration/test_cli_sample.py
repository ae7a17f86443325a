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
        assert r["prompt"] == PROMPT and r["steps"] == 4 and r["dtype"] == "fp32"
        # everything that regenerates the image (sampler settings at their defaults here)
        assert (r["schedule"], r["temperature"], r["gumbel"]) == ("cosine", 1.0, 2.0) and "routing" not in r
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
    # a routed image depends on its batch (the median entropy): the row says which batch size made it
    assert all(r["routing"] is True and r["batch_size"] == 64 for r in lines(res))


def test_geneval_layout_of_shapes_prompts_writes_metadata_evaluate_can_score(tmp_path, tiny_shapes_dir):
    prompts = ["a photo of a red circle", "a photo of two blue squares"]
    out = tmp_path / "GP1"
    res = run("sample", *prompts, "--layout", "geneval", "--steps", 2, "--model", f"shapes:{tiny_shapes_dir}",
              "--out", out)
    assert res.exit_code == 0, res.output
    metas = [json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) for i in range(2)]
    assert metas == [{"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
                      "prompt": prompts[0]},
                     {"tag": "counting", "include": [{"class": "square", "count": 2, "color": "blue"}],
                      "exclude": [{"class": "square", "count": 3}], "prompt": prompts[1]}]
    scored = run("evaluate", "--bench", "shapes", "--images", out)
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["images"] == 2
    assert "not shapes-world GenEval prompts" not in res.stderr
    # a prompt the shapes world cannot parse: its metadata holds only the prompt, and sample says so now
    res = run("sample", prompts[0], "a photo of circle red", "--layout", "geneval", "--steps", 2,
              "--model", f"shapes:{tiny_shapes_dir}", "--out", tmp_path / "GP2")
    assert res.exit_code == 0, res.output
    assert "1 of 2 prompts are not shapes-world GenEval prompts" in " ".join(res.stderr.split())


def test_bad_input(tmp_path, tiny_shapes_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cases without --out would use ./samples
    model = f"shapes:{tiny_shapes_dir}"
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_shapes_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad_tokenizer = tmp_path / "bad-tokenizer"
    shutil.copytree(tiny_shapes_dir, bad_tokenizer)
    with open(bad_tokenizer / "tokenizer.safetensors", "r+b") as f:
        f.truncate(100)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"\xff\xfe a photo of a circle\n")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    out = tmp_path / "never-written"
    cases = [
        (["sample", "--prompts", "-", "--model", model], "", "--prompts stdin holds no prompts"),
        (["sample", "--prompts", blank, "--model", model], None, f"--prompts {blank} holds no prompts"),
        (["sample", "", "--model", model], None, "an empty prompt was given"),
        (["sample", PROMPT, "--model", f"shapes:{tmp_path / 'no-model'}"], None, "no-model: no such folder"),
        (["sample", "a photo of a red dragon", "--model", model], None, "dragon"),
        (["sample", PROMPT, "--model", model, "--checkpoint", tmp_path / "nope"], None, "checkpoint not found"),
        (["sample", PROMPT, "--model", model, "--checkpoint", corrupt], None, "safetensors"),
        (["sample", PROMPT, "--model", model, "--steps", 0], None, "--steps"),
        (["sample", PROMPT, "--model", model, "--out", blocker / "sub"], None, "cannot write"),
        (["sample", PROMPT, "--model", "dalle"], None, "unknown model spec"),
        (["sample", "--prompts", tmp_path / "missing.txt", "--model", model], None, "not found"),
        (["sample", "--prompts", tmp_path, "--model", model], None, "is a folder, not a prompt file"),
        (["sample", "--prompts", "-", "--model", model], '{"prompt": "  "}\n', "stdin line 1: the 'prompt' field is empty"),
        # the error line quotes a long prompt shortened, not all of it again
        (["sample", "a photo of a " + "red " * 40 + "circle", "--model", model], None, "red red ...' has 45 words"),
        (["sample", PROMPT, "--model", model, "--device", "bogus", "--out", out], None,
         "device 'bogus': use auto | cpu | cuda | cuda:N"),
        (["sample", PROMPT, "--model", f"shapes:{bad_tokenizer}", "--out", out], None,
         "tokenizer.safetensors is not a readable safetensors file"),
        (["sample", "--prompts", latin1, "--model", model, "--out", out], None, f"--prompts {latin1} is not UTF-8"),
        (["sample", "--prompts", "-", "--model", model, "--out", out], b"\xff\xfe", "stdin) is not UTF-8"),
        (["sample", PROMPT, "--model", model, "--cfg", "nan", "--out", out], None, "--cfg must be a finite number"),
        (["sample", PROMPT, "--model", model, "--cfg", "inf", "--out", out], None, "--cfg must be a finite number"),
        (["sample", PROMPT, "--model", model, "--temperature", "nan", "--out", out], None, "--temperature must"),
        (["sample", PROMPT, "--model", model, "--gumbel", "-1", "--out", out], None, "--gumbel must be a finite "
                                                                                     "number >= 0"),
        # checked while parsing (before the model loads), or before the first batch: one line, no progress bar
        (["sample", PROMPT, "--model", model, "--batch-size", 0, "--out", out], None,
         "--batch-size must be an integer >= 1 (got 0)"),
        (["sample", PROMPT, "--model", model, "--seed", 99999999999999999999, "--out", out], None,
         f"--seed must be an integer from 0 to {2**63 - 1} (got 99999999999999999999)"),
        (["sample", PROMPT, "--model", model, "--seed", -1, "--out", out], None, "--seed must be an integer"),
        # image 1's seed would be 2**63, which --seed refuses: no printed seed may be unusable
        (["sample", PROMPT, "--model", model, "--seed", 2**63 - 1, "--n", 2, "--out", out], None,
         f"--seed {2**63 - 1} leaves no room for the image seeds (they run up to --seed + 1"),
        (["sample", PROMPT, "--model", model, "--steps", 2000, "--out", out], None, "use at most 64 steps"),
        (["sample", PROMPT, "--model", model, "--out", out / "a" / "b", "--checkpoint", tmp_path / "nope"], None,
         "checkpoint not found"),
    ]
    for args, stdin, message in cases:
        res = run(*args, input=stdin)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "samples").exists()  # failed runs leave no empty --out behind


def test_out_holding_an_earlier_run_is_refused(tmp_path, tiny_shapes_dir):
    """A smaller second run into the same folder would leave stale images that evaluate then scores."""
    model = f"shapes:{tiny_shapes_dir}"
    for layout, first in (("geneval", "00000"), ("flat", "00000-0000.png")):
        out = tmp_path / layout
        res = run("sample", PROMPT, "a photo of a circle", "--layout", layout, "--steps", 2, "--model", model,
                  "--out", out)
        assert res.exit_code == 0, res.output
        before = sorted(p.name for p in out.iterdir())
        res = run("sample", PROMPT, "--layout", layout, "--steps", 2, "--model", model, "--out", out)
        assert res.exit_code == 2, res.output
        assert f"--out {out} already holds images of an earlier run (e.g. {first})" in res.output
        assert len(res.output.strip().splitlines()) == 1 and res.stdout == ""
        assert sorted(p.name for p in out.iterdir()) == before
    # a folder that exists but is empty, or holds only files that are not ours, is fine
    mine = tmp_path / "mine"
    (mine / "2024").mkdir(parents=True)
    (mine / "notes.txt").write_text("x")
    (mine / "photo.png").write_bytes(b"")
    res = run("sample", PROMPT, "--steps", 2, "--model", model, "--out", mine)
    assert res.exit_code == 0, res.output
    assert (mine / "00000-0000.png").is_file()


def test_a_negative_prompt_steers_guidance_and_is_recorded(tiny_shapes_dir, tmp_path):
    model = f"shapes:{tiny_shapes_dir}"
    base = ["sample", "a photo of a red circle", "--model", model, "--steps", 4, "--n", 2]

    def run(out, *extra):
        res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / out), *extra])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        return rows, [open(r["path"], "rb").read() for r in rows]
    plain_rows, plain = run("a")
    neg_rows, neg = run("b", "--negative-prompt", "a photo of a blue square")
    assert "negative_prompt" not in plain_rows[0] and neg_rows[0]["negative_prompt"] == "a photo of a blue square"
    assert neg != plain
    again_rows, again = run("c", "--negative-prompt", neg_rows[0]["negative_prompt"])  # the row regenerates it
    assert again == neg
    res = CliRunner().invoke(main, [*base, "--negative-prompt", "a photo of a dragon", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "dragon" in res.output and "Traceback" not in res.output
