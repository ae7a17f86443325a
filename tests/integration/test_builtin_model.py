"""The pretrained built-in model ships inside the package and works offline."""

import json

from click.testing import CliRunner

from maskfocus_cli.cli import main
from maskfocus_cli.models.loading import load_model
from maskfocus_cli.models.shapes import builtin_model_dir


def test_shipped_weights_are_small_and_load():
    folder = builtin_model_dir()
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size <= 20 * 1024 * 1024
    adapter = load_model("shapes", device="cpu")
    assert adapter.grid == (8, 8) and adapter.codebook_size >= 256
    card = (folder / "README.md").read_text()
    assert "algorithm: `pretrain`" in card


def test_readme_command_works_offline(tmp_path):
    res = CliRunner().invoke(main, ["sample", "a photo of a red circle left of a blue square", "--n", "4",
                                    "--out", str(tmp_path / "OUT")])
    assert res.exit_code == 0, res.output
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(rows) == 4 and all((tmp_path / "OUT").joinpath(r["path"].split("/")[-1]).is_file() for r in rows)
    assert {r["model"] for r in rows} == {"shapes"}
