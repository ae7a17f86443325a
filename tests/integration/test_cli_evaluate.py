"""`maskfocus evaluate` end to end: shapes bench (tiny random model), GenEval / T2I-CompBench plumbing with
tiny random Mask2Former, open_clip and BLIP, resume, score-only reproduction, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from maskfocus_cli.bench.layout import write_geneval_metadata, write_geneval_sample, write_t2i_sample
from maskfocus_cli.bench.runner import read_results, shapes_benchmark, t2i_summary
from maskfocus_cli.cli import main
from maskfocus_cli.engine.sampling import SamplerSettings

FAST = ["--steps", "4", "--num-prompts", "6", "--n", "2"]
SCORE_KEYS = ("overall", "single_object", "two_object", "counting", "colors", "position", "color_attr", "counts",
              "images", "image_accuracy", "prompts", "prompt_accuracy", "pass_at_n", "images_per_row")


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    from maskfocus_cli.models.shapes import new_shapes_model
    from maskfocus_cli.shapes.tokenizer import fit_default
    path = tmp_path_factory.mktemp("tiny-shapes")
    torch.manual_seed(0)
    new_shapes_model(fit_default(num_scenes=200), d_model=32, n_layers=1, n_heads=2, d_ff=64).save(path)
    return path


@pytest.fixture(scope="session")
def shapes_run(tiny_shapes, tmp_path_factory):
    """One generate-and-score run of the shapes bench, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("shapes-eval") / "OUT"
    res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out))
    assert res.exit_code == 0, res.output
    return out, res


@pytest.fixture(scope="session")
def tiny_mask2former(tmp_path_factory) -> Path:
    pytest.importorskip("scipy")
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    from maskfocus_cli.bench.detectors import GENEVAL_CLASSES
    path = tmp_path_factory.mktemp("m2f")
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = dict(enumerate(GENEVAL_CLASSES))
    cfg = Mask2FormerConfig(backbone_config=backbone, num_queries=8, hidden_dim=32, feature_size=32,
                            mask_feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, encoder_feedforward_dim=32, common_stride=4, id2label=id2label,
                            label2id={v: k for k, v in id2label.items()}, use_pretrained_backbone=False)
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from open_clip.model import CLIP
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("clip")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = CLIP(**cfg)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "a", "photo", "of", "red", "blue",
              "circle", "square", "and", "?", "[DEC]"]


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor
    path = tmp_path_factory.mktemp("blip")
    (path / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(BLIP_WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, bos_token_id=BLIP_WORDS.index("[DEC]"),
                         pad_token_id=0, sep_token_id=3),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8))
    BlipForQuestionAnswering(cfg).save_pretrained(path)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                  ).save_pretrained(path)
    (path / "vocab.txt").unlink()
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args])


def stdout_json(res) -> dict:
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stdout  # exactly one JSON line: the summary
    return json.loads(lines[0])


def scores(summary: dict) -> dict:
    return {k: summary.get(k) for k in SCORE_KEYS}


def assert_user_error(res, *fragments: str) -> None:
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in err[0], err[0]


# ---------------------------------------------------------------- shapes bench
def test_shapes_generate_writes_layout_results_and_summary(shapes_run):
    out, res = shapes_run
    summary = stdout_json(res)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["bench"] == "shapes" and summary["model"].startswith("shapes:") and summary["n"] == 2
    assert summary["sampler"]["steps"] == 4 and summary["images_per_second_scored"] > 0
    for i in range(6):  # GenEval layout: metadata + samples/0000.png, 0001.png
        meta = json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text())
        assert {"tag", "include", "prompt"} <= set(meta)
        assert sorted(p.name for p in (out / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    rows = read_results(out / "results.jsonl")
    assert sorted((r["prompt_index"], r["image_index"]) for r in rows) == [(i, j) for i in range(6) for j in (0, 1)]
    assert all(r["reason"] == "" for r in rows if r["correct"]) and all(r["reason"] for r in rows if not r["correct"])
    # overall is the unweighted mean of per-tag accuracies of the rows
    by_tag: dict[str, list[bool]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r["correct"])
    assert len(by_tag) == 6  # make_metadata balances tags round-robin
    for t, v in by_tag.items():
        assert summary[t] == pytest.approx(sum(v) / len(v))
    assert summary["overall"] == pytest.approx(sum(sum(v) / len(v) for v in by_tag.values()) / 6)
    # pass@2: a prompt row passes if either of its two images is correct
    passed: dict[str, dict[int, bool]] = {}
    for r in rows:
        row = passed.setdefault(r["tag"], {})
        row[r["prompt_index"]] = row.get(r["prompt_index"], False) or r["correct"]
    for t, v in passed.items():
        assert summary["pass_at_n"][t] == pytest.approx(sum(v.values()) / len(v))
    assert summary["images_per_row"] == 2 and "pass@2 (a prompt passes if any of its 2 images" in res.stderr
    assert "Overall" in res.stderr and "Color attr." in res.stderr and "images/s" in res.stderr


def test_score_only_reproduces_the_summary_and_compare_prints_deltas(shapes_run, tmp_path):
    out, res = shapes_run
    again = invoke("--bench", "shapes", "--images", str(out), "--out", str(tmp_path / "R"),
                   "--compare", str(out / "summary.json"), "--markdown", str(tmp_path / "R" / "table.md"))
    assert again.exit_code == 0, again.output
    assert scores(stdout_json(again)) == scores(stdout_json(res))
    rescored = {(r["prompt_index"], r["image_index"]): r["correct"] for r in read_results(tmp_path / "R" / "results.jsonl")}
    original = {(r["prompt_index"], r["image_index"]): r["correct"] for r in read_results(out / "results.jsonl")}
    assert rescored == original
    assert "Δ" in again.stderr and "+0.00" in again.stderr
    assert "samples differ" not in again.stderr  # the same images, re-scored: comparable
    # re-scoring keeps how the images were made, so a later --compare against it still sees sample differences
    made = ("model", "checkpoint", "sampler", "n", "seed")
    assert {k: stdout_json(again)[k] for k in made} == {k: stdout_json(res)[k] for k in made}
    # also when re-scored in place from scratch (--fresh rewrites run.json)
    import shutil
    shutil.copytree(out, tmp_path / "IN")
    in_place = invoke("--bench", "shapes", "--images", str(tmp_path / "IN"), "--fresh")
    assert in_place.exit_code == 0, in_place.output
    assert {k: stdout_json(in_place)[k] for k in made} == {k: stdout_json(res)[k] for k in made}
    assert json.loads((tmp_path / "IN" / "run.json").read_text())["generator"]["seed"] == stdout_json(res)["seed"]
    # the markdown names the two runs as the terminal table does: this run's folder, then --compare's
    compare = again.stderr.split("vs earlier run")[1]
    terminal = [ln.split("│")[1].strip() for ln in compare.splitlines() if ln.count("│") > 2]
    markdown = [ln.split("|")[1].strip() for ln in (tmp_path / "R" / "table.md").read_text().splitlines()
                if ln.startswith("| ") and not ln.startswith("| Run")]
    assert terminal == markdown == ["R", "OUT", "Δ"]


def test_shapes_benchmark_in_process_matches_the_cli(shapes_run, tiny_shapes):
    from maskfocus_cli.models.loading import load_model
    _, res = shapes_run
    summary = shapes_benchmark(load_model(f"shapes:{tiny_shapes}", device="cpu"), n_prompts=6, n_images=2,
                               settings=SamplerSettings(steps=4), seed=0)
    assert scores(summary) == scores(stdout_json(res))


def test_rerun_resumes_and_scores_only_missing_images(tiny_shapes, tmp_path):
    out = tmp_path / "OUT"
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out)]
    first = stdout_json(invoke(*args))
    lines = (out / "results.jsonl").read_text().splitlines()
    # drop three rows and leave a truncated line, as a run killed mid-write would
    (out / "results.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:25])
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    s2 = stdout_json(second)
    assert s2["newly_scored"] == 3 and scores(s2) == scores(first)
    assert len(read_results(out / "results.jsonl")) == 12
    third = stdout_json(invoke(*args))
    assert third["newly_scored"] == 0 and third["images_per_second_scored"] is None
    # a different generator must not be mixed into the same results ...
    refused = invoke(*args[:-2], "--seed", "5", "--out", str(out))
    assert_user_error(refused, "different run", "--fresh")
    assert len(refused.stderr.splitlines()) == 1  # no empty line from a progress bar that never started
    # ... unless asked to start over
    fresh = invoke(*args[:-2], "--seed", "5", "--out", str(out), "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert stdout_json(fresh)["newly_scored"] == 12 and stdout_json(fresh)["seed"] == 5


def test_routing_samples_as_rollouts_do_and_is_its_own_run(shapes_run, tiny_shapes, tmp_path):
    plain_out, plain = shapes_run
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST]
    routed = invoke(*args, "--routing", "--out", str(tmp_path / "R"))
    assert routed.exit_code == 0, routed.output
    summary = stdout_json(routed)
    assert summary["routing"] is True and "routing" not in stdout_json(plain)
    plain_rows = read_results(plain_out / "results.jsonl")
    assert len(read_results(tmp_path / "R" / "results.jsonl")) == len(plain_rows)
    differ = [r for r in plain_rows
              if (plain_out / r["path"]).read_bytes() != (tmp_path / "R" / r["path"]).read_bytes()]
    assert differ  # same seeds, but half the batch took exploratory steps
    # routed images are never mixed into a standard run's results
    assert_user_error(invoke(*args, "--routing", "--out", str(plain_out)), "different run", "--fresh")
    assert_user_error(invoke("--bench", "shapes", "--images", str(plain_out), "--routing"), "--routing")
    # routed images depend on their batch's median entropy: another --batch-size is another run
    assert summary["batch_size"] == 64
    assert_user_error(invoke(*args, "--routing", "--batch-size", "4", "--out", str(tmp_path / "R")),
                      "different run", "--fresh")


def test_fewer_prompts_into_an_earlier_run_are_refused_and_fresh_replaces_it(tiny_shapes, tmp_path):
    """A smaller re-run used to reuse part of the earlier run and leave the rest (folders, result rows) for
    evaluate --images to score as if they were this run's."""
    out = tmp_path / "OUT"
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST]  # 6 prompts, 2 images each
    assert invoke(*args, "--out", str(out)).exit_code == 0
    (out / "notes.txt").write_text("mine")  # not the tool's: never deleted
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    smaller = [*args, "--num-prompts", "3", "--out", str(out)]
    assert_user_error(invoke(*smaller), "00003/metadata.jsonl", "--fresh", "new --out")
    assert_user_error(invoke(*args, "--n", "1", "--out", str(out)), "different run", 'n: 2 → 1', "--fresh")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # refused: nothing changed
    # result rows of images that are gone are refused too (the summary would skip them; the file would not)
    import shutil
    for i in (3, 4, 5):
        shutil.rmtree(out / f"{i:05d}")
    assert_user_error(invoke(*smaller), "results of 6 images that are not part of this run", "--fresh")
    assert_user_error(invoke("--bench", "shapes", "--images", str(out)), "results of 6 images", "--fresh")
    for i in (3, 4, 5):  # --fresh over the full earlier run: the folder then holds exactly the new run
        (out / f"{i:05d}" / "samples").mkdir(parents=True)
        write_geneval_sample(out, i, 0, torch.zeros(3, 8, 8))
    fresh = invoke(*smaller, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert stdout_json(fresh)["images"] == 6 and stdout_json(fresh)["newly_scored"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "notes.txt", "results.jsonl",
                                                     "run.json", "summary.json"]
    assert (out / "notes.txt").read_text() == "mine"
    assert len(read_results(out / "results.jsonl")) == 6
    assert stdout_json(invoke("--bench", "shapes", "--images", str(out), "--out", str(tmp_path / "R")))["images"] == 6


def test_images_no_evaluate_run_recorded_are_never_overwritten_or_deleted(tiny_shapes, tmp_path):
    out = tmp_path / "THEIRS"
    write_geneval_metadata(out, 0, GENEVAL_ROWS[1])
    write_geneval_sample(out, 0, 0, torch.zeros(3, 8, 8))
    before = (out / "00000" / "samples" / "0000.png").read_bytes()
    for fresh in ((), ("--fresh",)):
        res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out), *fresh)
        assert_user_error(res, "no evaluate run recorded", "00000/metadata.jsonl", "new --out")
    assert (out / "00000" / "samples" / "0000.png").read_bytes() == before
    (out / "run.json").write_text("{damaged")  # a record that cannot be read is said to be damaged
    res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out))
    assert_user_error(res, "its run.json is damaged", "new --out")
    assert (out / "00000" / "samples" / "0000.png").read_bytes() == before


def test_dtype_is_recorded_and_part_of_the_resume_check(tiny_shapes, tmp_path):
    out = tmp_path / "OUT"
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST]
    first = invoke(*args, "--out", str(out))
    assert first.exit_code == 0, first.output
    assert stdout_json(first)["dtype"] == "fp32"
    assert json.loads((out / "run.json").read_text())["generator"]["dtype"] == "fp32"
    # bf16 images must not be reported as a resume of the fp32 ones (nor the reverse)
    assert_user_error(invoke(*args, "--dtype", "bf16", "--out", str(out)), "different run", 'dtype: "fp32" → "bf16"',
                      "--fresh")
    assert_user_error(invoke("--bench", "shapes", "--images", str(out), "--dtype", "bf16"), "--dtype",
                      "drop --images")
    # results recorded before dtype was: an fp32 run, and they keep resuming
    info = json.loads((out / "run.json").read_text())
    del info["generator"]["dtype"]
    (out / "run.json").write_text(json.dumps(info))
    again = invoke(*args, "--out", str(out))
    assert again.exit_code == 0, again.output
    assert stdout_json(again)["newly_scored"] == 0


def test_missing_or_file_images_folder_is_named_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("--bench", "shapes", "--images", "typo_dir"), "--images typo_dir: no such folder")
    assert_user_error(invoke("--bench", "shapes", "--images", "typo_dir", "--out", "R"),
                      "--images typo_dir: no such folder")
    assert_user_error(invoke("--bench", "shapes", "--images", str(tmp_path / "no" / "such")),
                      "no such folder")
    (tmp_path / "empty.txt").write_text("")
    assert_user_error(invoke("--bench", "shapes", "--images", "empty.txt"), "--images empty.txt: not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_prompt_only_metadata_names_the_fix(tmp_path):
    images = tmp_path / "GP"
    write_geneval_metadata(images, 0, {"prompt": "a photo of a dog"})  # what `sample --layout geneval` wrote
    write_geneval_sample(images, 0, 0, torch.zeros(3, 8, 8))
    assert_user_error(invoke("--bench", "shapes", "--images", str(images), "--out", str(tmp_path / "R")),
                      "holds only a prompt", "sample --prompts FILE.jsonl", "shapes-world prompts")


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_errors(tiny_shapes, tmp_path):
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], '
                   '"prompt": "a photo of a circle"}\n{"tag": "single_object", "include": [\n')
    assert_user_error(invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--metadata", str(bad),
                             "--out", str(tmp_path / "o1")), "meta.jsonl:2")
    assert_user_error(invoke("--bench", "shapes", "--n", "0", "--out", str(tmp_path / "o2")), "--n")
    wrong = tmp_path / "flat"
    wrong.mkdir()
    write_t2i_sample(wrong, "a photo of a circle", 0, torch.zeros(3, 8, 8))
    assert_user_error(invoke("--bench", "shapes", "--images", str(wrong), "--out", str(tmp_path / "o3")),
                      "GenEval layout")
    assert_user_error(invoke("--bench", "shapes", "--images", str(wrong), "--model", "shapes"), "--model")
    assert_user_error(invoke("--bench", "geneval", "--images", str(wrong), "--detector", str(tmp_path / "none"),
                             "--out", str(tmp_path / "o4")), "--detector")
    assert_user_error(invoke("--bench", "t2i-compbench", "--category", "color", "--images", str(wrong),
                             "--blip", str(tmp_path / "none"), "--out", str(tmp_path / "o5")), "--blip")
    assert_user_error(invoke("--bench", "shapes", "--compare", str(tmp_path / "none.json")), "summary")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b"\xff\xfe")
    assert_user_error(invoke("--bench", "shapes", "--metadata", str(latin1), "--out", str(tmp_path / "o6")),
                      f"{latin1} is not UTF-8 text")
    model = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST]
    assert_user_error(invoke(*model, "--device", "bogus", "--out", str(tmp_path / "o7")), "device 'bogus'")
    assert_user_error(invoke(*model, "--cfg", "nan", "--out", str(tmp_path / "o8")), "--cfg must be a finite")
    assert_user_error(invoke(*model, "--temperature", "0", "--out", str(tmp_path / "o8")), "--temperature must")
    # caught while parsing (before any model loads), or right after loading: one line, no progress bar
    assert_user_error(invoke(*model, "--batch-size", "0", "--out", str(tmp_path / "o9")),
                      "--batch-size must be an integer >= 1 (got 0)")
    assert_user_error(invoke("--bench", "shapes", "--images", str(wrong), "--score-batch-size", "0"),
                      "--score-batch-size must be an integer >= 1")
    assert_user_error(invoke(*model, "--seed", str(2**64), "--out", str(tmp_path / "o9")),
                      f"--seed must be an integer from 0 to {2**63 - 1}")
    assert_user_error(invoke(*model, "--steps", "2000", "--out", str(tmp_path / "o9")), "use at most 64 steps")
    assert_user_error(invoke(*model, "--model", "bogus", "--out", str(tmp_path / "o9")), "unknown model spec")
    # failed runs leave no empty --out behind (folders that existed before stay)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 10))


def test_unwritable_markdown_fails_before_generating(tiny_shapes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "OUT"
    for target, reason in ((blocker / "table.md", "is a file"), (tmp_path, "it is a folder")):
        res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out),
                     "--markdown", str(target))
        assert_user_error(res, f"cannot write to --markdown {target}", reason)
        assert not (out / "results.jsonl").exists()  # nothing was generated


def test_missing_official_file_offline_says_what_to_do(monkeypatch, tmp_path):
    from maskfocus_cli.bench import prompts

    def offline(url, dest, timeout=0):
        raise OSError("network is unreachable")
    monkeypatch.setattr(prompts, "_download", offline)
    monkeypatch.setenv("MASKFOCUS_CACHE", str(tmp_path / "cache"))
    assert_user_error(invoke("--bench", "geneval", "--out", str(tmp_path / "o")), "--metadata",
                      "evaluation_metadata.jsonl")


# ---------------------------------------------------------------- real-image benches (tiny random weights)
GENEVAL_ROWS = [
    {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"},
                                      {"class": "cat", "count": 1, "color": "blue"}],
     "prompt": "a photo of a red dog and a blue cat"},
    {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}],
     "prompt": "a photo of two cups"},
]


def test_geneval_score_only_with_tiny_detectors(tiny_mask2former, tiny_clip, tmp_path):
    images = tmp_path / "IMAGES"
    torch.manual_seed(0)
    for i, row in enumerate(GENEVAL_ROWS):
        write_geneval_metadata(images, i, row)
        for j in range(2):
            write_geneval_sample(images, i, j, torch.rand(3, 64, 64))
    res = invoke("--bench", "geneval", "--images", str(images), "--detector", str(tiny_mask2former),
                 "--clip", str(tiny_clip), "--out", str(tmp_path / "OUT"), "--score-batch-size", "3")
    assert res.exit_code == 0, res.output
    summary = stdout_json(res)
    assert summary["images"] == 4 and set(summary["counts"]) == {"counting", "color_attr"}
    rows = read_results(tmp_path / "OUT" / "results.jsonl")
    assert [(r["prompt_index"], r["image_index"], r["prompt"]) for r in rows] == [
        (i, j, GENEVAL_ROWS[i]["prompt"]) for i in range(2) for j in range(2)]
    # random weights score ~0.01, below GenEval's 0.3: nothing is found, and the reasons say so
    assert not any(r["correct"] for r in rows)
    assert all(r["reason"].startswith("expected") for r in rows)


def test_geneval_generate_with_shapes_model_and_tiny_detectors(tiny_shapes, tiny_mask2former, tiny_clip, tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(json.dumps(r) for r in [
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
         "prompt": "a photo of a red circle"}]) + "\n")
    res = invoke("--bench", "geneval", "--model", f"shapes:{tiny_shapes}", "--steps", "4", "--metadata", str(meta),
                 "--detector", str(tiny_mask2former), "--clip", str(tiny_clip), "--out", str(tmp_path / "OUT"))
    assert res.exit_code == 0, res.output
    summary = stdout_json(res)
    assert summary["n"] == 4 and summary["images"] == 4  # GenEval's default: 4 images per prompt
    assert sorted(p.name for p in (tmp_path / "OUT" / "00000" / "samples").iterdir()) == [
        f"{j:04d}.png" for j in range(4)]


def test_t2i_compbench_generate_and_rescore_with_tiny_blip(tiny_shapes, tiny_blip, tmp_path):
    prompts = tmp_path / "color_val.txt"
    prompts.write_text("a photo of a red circle\na photo of a blue square\n")
    out = tmp_path / "OUT"
    res = invoke("--bench", "t2i-compbench", "--category", "color", "--prompts", str(prompts), "--model",
                 f"shapes:{tiny_shapes}", "--steps", "4", "--n", "3", "--blip", str(tiny_blip), "--out", str(out))
    assert res.exit_code == 0, res.output
    summary = stdout_json(res)
    names = sorted(p.name for p in (out / "color" / "samples").iterdir())
    assert names == sorted([f"a photo of a red circle_{i:06d}.png" for i in range(3)]
                           + [f"a photo of a blue square_{i:06d}.png" for i in range(3, 6)])
    rows = read_results(out / "results.jsonl")
    assert len(rows) == 6 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert summary["color"] == pytest.approx(sum(r["score"] for r in rows) / 6)
    assert summary["counts"]["color"] == {"images": 6, "prompts": 2}
    assert "Color" in res.stderr and "Numeracy" not in res.stderr  # only the categories scored
    again = invoke("--bench", "t2i-compbench", "--category", "color", "--images", str(out),  # finds OUT/color/
                   "--blip", str(tiny_blip), "--out", str(tmp_path / "R"))
    assert again.exit_code == 0, again.output
    assert stdout_json(again)["color"] == pytest.approx(summary["color"], abs=1e-6)
    # without --category the folder's categories are scored, so only BLIP is needed (it asked for Mask2Former)
    inferred = invoke("--bench", "t2i-compbench", "--images", str(out), "--blip", str(tiny_blip),
                      "--out", str(tmp_path / "R2"))
    assert inferred.exit_code == 0, inferred.output
    assert stdout_json(inferred)["color"] == pytest.approx(summary["color"], abs=1e-6)
    # one prompt fewer: the other prompt's images would be stale; --fresh leaves exactly the new run
    prompts.write_text("a photo of a red circle\n")
    smaller = ["--bench", "t2i-compbench", "--category", "color", "--prompts", str(prompts), "--model",
               f"shapes:{tiny_shapes}", "--steps", "4", "--n", "3", "--blip", str(tiny_blip), "--out", str(out)]
    refused = invoke(*smaller)  # (stderr also holds transformers' weight-loading bar)
    assert refused.exit_code == 2 and "blue square_000003.png); pass --fresh" in refused.stderr, refused.output
    fresh = invoke(*smaller, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert sorted(p.name for p in (out / "color" / "samples").iterdir()) == names[3:]
    assert len(read_results(out / "results.jsonl")) == 3


def test_t2i_summary_means_per_category():
    rows = [{"category": "color", "prompt": "p", "score": 0.5}, {"category": "color", "prompt": "q", "score": 0.25},
            {"category": "numeracy", "prompt": "p", "score": 1.0}]
    s = t2i_summary(rows)
    assert s["color"] == 0.375 and s["numeracy"] == 1.0 and s["images"] == 3
    assert list(s)[:3] == ["bench", "color", "numeracy"]
    assert s["counts"]["color"] == {"images": 2, "prompts": 2}
    assert not any(isinstance(v, float) and math.isnan(v) for v in s.values())


def test_a_prompt_the_model_cannot_read_fails_before_out_is_written(tiny_shapes, tmp_path):
    good = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    bad = {**good, "prompt": "a photo of an elephant"}
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "EV"
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--n", "1", "--steps", "4", "--out", str(out)]
    assert_user_error(invoke(*args, "--prompts", str(meta)), "elephant")
    assert not out.exists()  # it left run.json and both metadata files, which then blocked the corrected run
    meta.write_text(json.dumps(good) + "\n")
    res = invoke(*args, "--prompts", str(meta))
    assert res.exit_code == 0, res.output


def test_compare_notes_when_the_two_runs_sampled_different_images(shapes_run, tiny_shapes, tmp_path):
    out, _ = shapes_run
    res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--steps", "4", "--num-prompts", "4",
                 "--n", "2", "--out", str(tmp_path / "R"), "--compare", str(out / "summary.json"))
    assert res.exit_code == 0, res.output
    note = [ln for ln in res.stderr.splitlines() if "samples differ" in ln]
    assert note and "images 8 vs 12" in note[0] and "prompts" in note[0]


def test_a_run_resumes_from_another_working_directory(tiny_shapes, tmp_path, monkeypatch):
    """A requeued job may start elsewhere: the same model named by another relative path is the same run."""
    import shutil
    shutil.copytree(tiny_shapes, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path / "models")
    first = invoke("--bench", "shapes", "--model", "shapes:tiny", *FAST, "--out", str(tmp_path / "EV"))
    assert first.exit_code == 0, first.output
    monkeypatch.chdir(tmp_path)
    again = invoke("--bench", "shapes", "--model", "shapes:models/tiny", *FAST, "--out", "EV")
    assert again.exit_code == 0, again.output
    assert stdout_json(again)["newly_scored"] == 0 and scores(stdout_json(again)) == scores(stdout_json(first))
    # a record written before paths were made absolute still resumes from its own directory
    info = json.loads((tmp_path / "EV" / "run.json").read_text())
    info["generator"]["model"] = "shapes:models/tiny"
    (tmp_path / "EV" / "run.json").write_text(json.dumps(info))
    old = invoke("--bench", "shapes", "--model", "shapes:models/tiny", *FAST, "--out", "EV")
    assert old.exit_code == 0, old.output
    assert stdout_json(old)["newly_scored"] == 0


def test_prompt_draw_options_are_refused_where_they_would_be_ignored(tiny_shapes, tmp_path):
    """--num-prompts / --prompt-seed draw held-out shapes prompts: with a --metadata file (or another bench)
    every prompt is run, so a "quick check" of 50 prompts would have run them all."""
    from maskfocus_cli.bench.runner import shapes_metadata
    meta = tmp_path / "m.jsonl"
    meta.write_text("".join(json.dumps(m) + "\n" for m in shapes_metadata(6, 0)))
    model = ["--model", f"shapes:{tiny_shapes}", "--steps", "4", "--n", "1"]
    assert_user_error(invoke("--bench", "shapes", *model, "--metadata", str(meta), "--num-prompts", "1",
                             "--out", str(tmp_path / "A")), "--num-prompts", "the --metadata file is used whole")
    assert_user_error(invoke("--bench", "geneval", *model, "--prompt-seed", "3", "--out", str(tmp_path / "B")),
                      "--prompt-seed", "the geneval prompt list is used whole")
    assert not (tmp_path / "A").exists() and not (tmp_path / "B").exists()


def test_a_draw_that_leaves_tags_out_says_what_overall_then_means(tiny_shapes, tmp_path):
    res = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--steps", "4", "--n", "1",
                 "--num-prompts", "4", "--out", str(tmp_path / "E"))
    assert res.exit_code == 0, res.output
    summary = stdout_json(res)
    scored = [t for t in ("single_object", "two_object", "counting", "colors", "position", "color_attr")
              if summary.get(t) is not None]
    assert len(scored) == 4
    assert "note: --num-prompts 4 does not split over the 6 tags" in res.stderr
    assert "overall averages the 4 tags scored" in res.stderr
    even = invoke("--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--steps", "4", "--n", "1",
                  "--num-prompts", "6", "--out", str(tmp_path / "F"))
    assert even.exit_code == 0 and "does not split" not in even.stderr, even.output


def test_a_stale_out_is_refused_before_any_model_or_scorer_loads(tiny_shapes, tmp_path, monkeypatch):
    """Loading a real model takes minutes: an --out holding another run's results fails first."""
    out = tmp_path / "OUT"
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", *FAST, "--out", str(out)]
    assert invoke(*args).exit_code == 0
    import maskfocus_cli.models.loading as loading
    import maskfocus_cli.shapes.detector as detector

    def must_not_load(*a, **k):
        raise AssertionError("loaded before the run was checked")
    monkeypatch.setattr(loading, "load_model", must_not_load)
    monkeypatch.setattr(detector, "ShapesDetector", must_not_load)
    assert_user_error(invoke(*args, "--seed", "5"), "different run", 'seed: 0 → 5', "--fresh")


def test_compare_with_another_bench_is_refused_before_any_work(shapes_run, tmp_path):
    out, _ = shapes_run
    res = invoke("--bench", "geneval", "--images", str(out), "--out", str(tmp_path / "G"),
                 "--compare", str(out / "summary.json"))
    assert_user_error(res, "is a 'shapes' run; this is a 'geneval' run")
    assert not (tmp_path / "G").exists()


def test_a_checkpoint_watched_with_other_sampler_settings_is_noted(tiny_shapes, tmp_path):
    """Evaluate uses the family's published settings; a run whose grids used others says how to match them."""
    import json as _json
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    import shutil
    shutil.copy(tiny_shapes / "model.safetensors", ckpt / "model.safetensors")
    (ckpt / "trainer.json").write_text(_json.dumps({"eval_sampler": {"steps": 4, "guidance_scale": 5.0,
                                                                     "gumbel_temperature": 2.0,
                                                                     "negative_prompt": ""}}))
    args = ["--bench", "shapes", "--model", f"shapes:{tiny_shapes}", "--checkpoint", str(ckpt), "--num-prompts", "6",
            "--n", "1"]
    res = invoke(*args, "--steps", "4", "--out", str(tmp_path / "A"))
    said = " ".join(res.stderr.split())
    assert res.exit_code == 0 and "drew its sample grids with --cfg 5.0;" in said, res.output
    assert "--steps" not in said.split("drew its sample grids with")[1].split(";")[0]  # given: the user's choice
    res = invoke(*args, "--steps", "4", "--cfg", "5", "--out", str(tmp_path / "B"))
    assert "drew its sample grids" not in res.stderr
