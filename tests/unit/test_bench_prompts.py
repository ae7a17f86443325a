"""Benchmark prompt files (GenEval metadata, T2I-CompBench lists), cache/download, and image layouts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from maskfocus_cli.bench import layout, prompts
from maskfocus_cli.bench.prompts import (GENEVAL_COLORS, GENEVAL_URL, T2I_COMPBENCH_CATEGORIES,
                                         complex_prompt_key, load_complex_kinds, load_geneval_metadata,
                                         load_t2i_compbench)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
GENEVAL_FILE = DATA / "geneval" / "evaluation_metadata.jsonl"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Every test gets an empty cache and a downloader that fails loudly if reached."""
    monkeypatch.setenv("MASKFOCUS_CACHE", str(tmp_path / "cache"))

    def forbidden(url, dest, timeout=None):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(prompts, "_download", forbidden)


# ---------------------------------------------------------------- real files

def test_real_geneval_metadata_counts():
    if not GENEVAL_FILE.is_file():
        pytest.skip("shared GenEval metadata not present")
    rows = load_geneval_metadata(GENEVAL_FILE, colors=GENEVAL_COLORS)
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {"single_object": 80, "two_object": 99, "counting": 80,
                                               "colors": 94, "position": 100, "color_attr": 100}
    # every position prompt relates its second object to the first one
    pos = [r for r in rows if r["tag"] == "position"]
    assert all(r["include"][1]["position"][1] == 0 for r in pos)
    # counting prompts carry an exclude clause one above the count
    counting = [r for r in rows if r["tag"] == "counting"]
    assert all(r["exclude"][0]["count"] == r["include"][0]["count"] + 1 for r in counting)


@pytest.mark.parametrize("category", T2I_COMPBENCH_CATEGORIES)
def test_real_t2i_compbench_files(category):
    path = DATA / "t2i-compbench" / f"{category}_val.txt"
    if not path.is_file():
        pytest.skip(f"shared {path.name} not present")
    got = load_t2i_compbench(category, path)
    assert len(got) == 300
    assert all(p == p.strip() and p for p in got)


# ---------------------------------------------------------------- malformed GenEval rows

GOOD = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                       {"class": "cat", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a cat left of a dog"}


def _write_rows(tmp_path, lines):
    p = tmp_path / "meta.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({**GOOD, "tag": "colour"}), "'tag' must be one of"),
    (json.dumps({**GOOD, "include": []}), "'include' must be a non-empty list"),
    (json.dumps({**GOOD, "include": [{"class": "dog", "count": 0}]}), "include[0].count"),
    (json.dumps({**GOOD, "include": [{"class": "dog", "count": 1, "colour": "red"}]}), "unknown key"),
    (json.dumps({**GOOD, "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}]}),
     "earlier include clause"),
    (json.dumps({**GOOD, "include": [{"class": "dog", "count": 1},
                                     {"class": "cat", "count": 1, "position": ["beside", 0]}]}), "position"),
    (json.dumps({**GOOD, "prompt": ""}), "'prompt'"),
    (json.dumps({**GOOD, "exclude": [{"class": "dog", "count": True}]}), "exclude[0].count"),
])
def test_malformed_geneval_line_names_file_and_line(tmp_path, bad, message):
    path = _write_rows(tmp_path, [json.dumps(GOOD), "", bad])
    with pytest.raises(ValueError) as e:
        load_geneval_metadata(path)
    assert f"{path}:3:" in str(e.value)
    assert message in str(e.value)


def test_colour_vocabulary_is_enforced_only_when_given(tmp_path):
    row = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "cyan"}], "prompt": "a cyan dog"}
    path = _write_rows(tmp_path, [json.dumps(row)])
    assert load_geneval_metadata(path)[0]["include"][0]["color"] == "cyan"
    with pytest.raises(ValueError, match=r":1: include\[0\]\.color"):
        load_geneval_metadata(path, colors=GENEVAL_COLORS)


def test_non_utf8_files_are_named(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a caf\xe9 photo\n".encode("latin-1"))
    for load in (load_geneval_metadata, lambda p: load_t2i_compbench("color", p)):
        with pytest.raises(ValueError, match=f"{latin1} is not UTF-8 text"):
            load(latin1)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_geneval_metadata(empty)
    with pytest.raises(ValueError, match="--metadata"):
        load_geneval_metadata(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown T2I-CompBench category"):
        load_t2i_compbench("colour", empty)


def test_t2i_lines_are_stripped_tab_split_and_blank_skipped(tmp_path):
    p = tmp_path / "color_val.txt"
    p.write_text("a red car\textra\n\n  a blue dog  \n")
    assert load_t2i_compbench("color", p) == ["a red car", "a blue dog"]


# ---------------------------------------------------------------- cache and download

def test_default_geneval_uses_cache_without_network(tmp_path):
    cached = prompts.cache_dir() / "geneval" / "evaluation_metadata.jsonl"
    assert cached.is_relative_to(tmp_path / "cache")
    cached.parent.mkdir(parents=True)
    cached.write_text(json.dumps(GOOD) + "\n")
    assert load_geneval_metadata() == [GOOD]


def test_default_downloads_official_file_once(monkeypatch):
    calls = []

    def fake(url, dest, timeout=None):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("a red car\na blue dog\n")

    monkeypatch.setattr(prompts, "_download", fake)
    assert load_t2i_compbench("color") == ["a red car", "a blue dog"]
    assert load_t2i_compbench("color") == ["a red car", "a blue dog"]
    assert calls == ["https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/main/examples/dataset/"
                     "color_val.txt"]


def test_failed_download_says_url_destination_and_option(monkeypatch):
    def offline(url, dest, timeout=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(prompts, "_download", offline)
    with pytest.raises(ValueError) as e:
        load_geneval_metadata()
    msg = str(e.value)
    assert GENEVAL_URL in msg and "network unreachable" in msg and "--metadata" in msg
    assert str(prompts.cache_dir() / "geneval" / "evaluation_metadata.jsonl") in msg
    with pytest.raises(ValueError, match="--prompts"):
        load_t2i_compbench("numeracy")


def test_complex_kinds(tmp_path):
    sp, ac = tmp_path / "s.txt", tmp_path / "a.txt"
    sp.write_text("The red hat was on top of the brown coat rack.\nBoth. Again\n")
    ac.write_text("A man eats an apple.\nBoth. Again\n")
    kinds = load_complex_kinds(sp, ac)
    assert kinds[complex_prompt_key("The red hat was on top of the brown coat rack.")] == "spatial"
    assert kinds["a man eats an apple"] == "action"
    assert kinds["both"] == "spatial"  # listed in both files: the official script checks spatial first


# ---------------------------------------------------------------- layouts

def test_geneval_layout_roundtrip(tmp_path):
    out = tmp_path / "out"
    img = torch.rand(3, 8, 10)
    for idx, meta in enumerate([GOOD, {**GOOD, "prompt": "another"}]):
        layout.write_geneval_metadata(out, idx, meta)
        for s in range(2):
            layout.write_geneval_sample(out, idx, s, img)
    assert (out / "00001" / "samples" / "0001.png").is_file()
    assert not list(out.rglob("*.tmp"))
    items = layout.scan_geneval(out)
    assert [i.index for i in items] == [0, 1]
    assert items[1].metadata["prompt"] == "another"
    assert [p.name for p in items[0].images] == ["0000.png", "0001.png"]
    back = layout.load_image(items[0].images[0])
    assert torch.allclose(back, img, atol=1 / 255)


def test_geneval_layout_accepts_official_json_dump_and_five_digit_samples(tmp_path):
    d = tmp_path / "00000"
    (d / "samples").mkdir(parents=True)
    (d / "metadata.jsonl").write_text(json.dumps(GOOD))  # json.dump: no trailing newline
    layout.save_png(torch.zeros(3, 4, 4), d / "samples" / "00000.png")
    assert layout.scan_geneval(tmp_path)[0].images[0].name == "00000.png"


def test_geneval_layout_errors(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not in GenEval layout: expected 00000/metadata.jsonl"):
        layout.scan_geneval(tmp_path)
    (tmp_path / "00000" / "samples").mkdir(parents=True)
    with pytest.raises(ValueError, match="metadata.jsonl is missing"):
        layout.scan_geneval(tmp_path)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps({**GOOD, "tag": "nope"}))
    with pytest.raises(ValueError, match="invalid GenEval metadata"):
        layout.scan_geneval(tmp_path)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps(GOOD))
    with pytest.raises(ValueError, match="no samples"):
        layout.scan_geneval(tmp_path)


def test_run_files_and_their_removal_keep_what_the_tool_did_not_write(tmp_path):
    img = torch.zeros(3, 4, 4)
    for i in range(2):
        layout.write_geneval_metadata(tmp_path, i, GOOD)
        layout.write_geneval_sample(tmp_path, i, 0, img)
    layout.write_t2i_sample(tmp_path / "color", "a red car", 3, img)
    (tmp_path / "00001" / "samples" / "notes.txt").write_text("mine")
    (tmp_path / "2024").mkdir()  # a numbered folder that is not a prompt folder
    (tmp_path / "2024" / "0000.png").write_bytes(b"")
    files = layout.geneval_run_files(tmp_path) + layout.t2i_run_files(tmp_path, T2I_COMPBENCH_CATEGORIES)
    assert [str(f.relative_to(tmp_path)) for f in files] == [
        "00000/metadata.jsonl", "00000/samples/0000.png", "00001/metadata.jsonl", "00001/samples/0000.png",
        "color/samples/a red car_000003.png"]
    layout.remove_run_files(tmp_path, files)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "00001", "00001/samples", "00001/samples/notes.txt", "2024", "2024/0000.png"]


def test_prompt_only_metadata_says_how_to_write_geneval_metadata(tmp_path):
    layout.write_geneval_metadata(tmp_path, 0, {"prompt": "a photo of a dog"})
    layout.write_geneval_sample(tmp_path, 0, 0, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="holds only a prompt.*--prompts FILE.jsonl.*shapes-world prompts"):
        layout.scan_geneval(tmp_path)


def test_t2i_layout_roundtrip_and_errors(tmp_path):
    img = torch.rand(3, 6, 6)
    layout.write_t2i_sample(tmp_path, "a red car", 1, img)
    layout.write_t2i_sample(tmp_path, "a blue dog", 0, img)
    assert (tmp_path / "samples" / "a red car_000001.png").is_file()
    got = layout.scan_t2i_compbench(tmp_path)
    assert [(s.idx, s.prompt) for s in got] == [(0, "a blue dog"), (1, "a red car")]
    assert [s.idx for s in layout.scan_t2i_compbench(tmp_path / "samples")] == [0, 1]
    with pytest.raises(ValueError, match="path separator"):
        layout.t2i_sample_path(tmp_path, "a/b", 0)
    layout.save_png(img, tmp_path / "samples" / "grid.png")
    with pytest.raises(ValueError, match="grid.png does not match"):
        layout.scan_t2i_compbench(tmp_path)
    (tmp_path / "samples" / "grid.png").unlink()
    layout.save_png(img, tmp_path / "samples" / "a cat_000001.png")
    with pytest.raises(ValueError, match="two images with index 1"):
        layout.scan_t2i_compbench(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not in T2I-CompBench layout"):
        layout.scan_t2i_compbench(tmp_path / "empty")
