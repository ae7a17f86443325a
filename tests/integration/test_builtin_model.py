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


def test_logits_at_masked_positions_match_torchs_encoder():
    """SDPA blocks + the masked-rows-only last block give the stock nn.TransformerEncoder's logits
    at every [MASK] position, for rows with different mask counts (and all/none masked)."""
    import torch
    adapter = load_model("shapes", device="cpu")
    net = adapter.transformer.eval()
    gen = torch.Generator().manual_seed(0)
    text = adapter.text_ids(["a photo of a red circle left of a blue square"] * 3 + [""] * 3)

    def stock(tokens):
        n = tokens.shape[1]
        x = torch.cat([net.text_emb(text) + net.text_pos, net.token_emb(tokens) + net.image_pos], 1)
        pad = torch.cat([text == 0, torch.zeros_like(tokens, dtype=torch.bool)], 1)
        return net.head(net.norm(net.encoder(x, src_key_padding_mask=pad)[:, -n:]))

    with torch.no_grad():
        for counts in ([64] * 6, [40, 37, 1, 63, 20, 40], [0] * 6):
            tokens = torch.randint(0, adapter.codebook_size, (6, 64), generator=gen)
            for row, c in enumerate(counts):
                tokens[row, torch.randperm(64, generator=gen)[:c]] = adapter.mask_id
            masked = tokens == adapter.mask_id
            mine, ref = net(tokens, text), stock(tokens)
            assert mine.shape == ref.shape == (6, 64, adapter.codebook_size)
            if masked.any():
                torch.testing.assert_close(mine[masked], ref[masked], atol=2e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(mine, ref, atol=2e-4, rtol=1e-4)
