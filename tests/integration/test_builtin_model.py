"""The pretrained built-in model ships inside the package and works offline."""

import json

import pytest

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


def _random_model(text_attends_image: bool):
    import torch
    from maskfocus_cli.models.shapes import new_shapes_model
    base = load_model("shapes", device="cpu")
    adapter = new_shapes_model(base.tokenizer, text_attends_image=text_attends_image)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights large enough that every path matters
        for p in adapter.transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return adapter


@pytest.mark.parametrize("text_attends_image", [True, False])
def test_logits_at_masked_positions_match_torchs_encoder(text_attends_image):
    """SDPA blocks, cached text keys/values and the masked-rows-only last block give the stock
    nn.TransformerEncoder's logits at every [MASK] position, for rows with different mask counts
    (and all/none masked), for the joint and the text-reads-text-only attention."""
    import torch
    adapter = _random_model(text_attends_image)
    net = adapter.transformer.eval()
    gen = torch.Generator().manual_seed(0)
    text = adapter.text_ids(["a photo of a red circle left of a blue square"] * 3 + [""] * 3)
    L, n, heads = text.shape[1], 64, net.cfg.n_heads

    def stock(tokens):
        x = torch.cat([net.text_emb(text) + net.text_pos, net.token_emb(tokens) + net.image_pos], 1)
        pad = torch.cat([text == 0, torch.zeros_like(tokens, dtype=torch.bool)], 1)
        if text_attends_image:
            return net.head(net.norm(net.encoder(x, src_key_padding_mask=pad)[:, -n:]))
        mask = torch.zeros(6, L + n, L + n)
        mask[:, :L, L:] = float("-inf")  # text rows read no image
        mask[:, L:, :L] = torch.zeros(6, n, L).masked_fill((text == 0)[:, None, :], float("-inf"))
        return net.head(net.norm(net.encoder(x, mask=mask.repeat_interleave(heads, 0))[:, -n:]))

    with torch.no_grad():
        for counts in ([64] * 6, [40, 37, 1, 63, 20, 40], [0] * 6):
            tokens = torch.randint(0, adapter.codebook_size, (6, 64), generator=gen)
            for row, c in enumerate(counts):
                tokens[row, torch.randperm(64, generator=gen)[:c]] = adapter.mask_id
            masked = tokens == adapter.mask_id
            cond = adapter.encode_prompts(["a photo of a red circle left of a blue square"] * 3 + [""] * 3)
            prepared = adapter.prepare_cond(cond)
            assert ("text_kv" in prepared) is (not text_attends_image)
            mine, ref = net(tokens, text), stock(tokens)
            cached = adapter.call_transformer(net, tokens, prepared, None)
            assert mine.shape == ref.shape == (6, 64, adapter.codebook_size)
            assert torch.equal(cached, mine)
            if masked.any():
                torch.testing.assert_close(mine[masked], ref[masked], atol=2e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(mine, ref, atol=2e-4, rtol=1e-4)


def test_folders_without_the_attention_key_load_as_joint(tmp_path):
    """Model folders written before ``text_attends_image`` existed keep their joint attention."""
    import torch
    from maskfocus_cli.io.checkpoint import atomic_write_json, read_json
    from maskfocus_cli.models.shapes import load_shapes_model
    adapter = _random_model(True)
    adapter.save(tmp_path)
    cfg = read_json(tmp_path / "config.json")
    del cfg["text_attends_image"]
    atomic_write_json(tmp_path / "config.json", cfg)
    loaded = load_shapes_model(tmp_path)
    assert loaded.cfg.text_attends_image is True
    cond = loaded.encode_prompts(["a photo of two squares"])
    assert loaded.prepare_cond(cond) is cond
    tokens = torch.full((1, 64), loaded.mask_id)
    with torch.no_grad():
        assert torch.equal(loaded.transformer(tokens, cond["text_ids"]), adapter.transformer(tokens, cond["text_ids"]))


def test_shipped_base_caches_its_text():
    """The shipped base is the text-reads-text-only variant (its sampling runs image rows only)."""
    assert load_model("shapes", device="cpu").cfg.text_attends_image is False


def test_sampling_after_a_weight_change_uses_the_new_weights(tiny_shapes_dir):
    """Prompt-only work is redone per sampling run: reusing the same cond dicts after an
    optimiser-like weight change gives what a fresh model with those weights gives."""
    import copy

    import torch
    from maskfocus_cli.engine.sampling import SamplerSettings, sample
    adapter = load_model(f"shapes:{tiny_shapes_dir}", device="cpu")
    prompts = ["a photo of two squares", "a photo of a red circle"]
    cond, uncond = adapter.encode_prompts(prompts), adapter.encode_prompts(["", ""])
    settings = SamplerSettings(steps=6, guidance_scale=3.0)
    before = sample(adapter, cond, uncond, [3, 4], settings).tokens
    with torch.no_grad():
        for p in adapter.transformer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    after = sample(adapter, cond, uncond, [3, 4], settings).tokens
    fresh = copy.deepcopy(adapter)
    expected = sample(fresh, fresh.encode_prompts(prompts), fresh.encode_prompts(["", ""]), [3, 4], settings).tokens
    assert torch.equal(after, expected) and not torch.equal(after, before)


def test_checkpoint_of_another_attention_variant_is_refused(tmp_path):
    """A checkpoint made from the previous (joint-attention) base loads into nothing silently."""
    from maskfocus_cli.models.loading import load_model as load
    old = _random_model(True)
    old.save(tmp_path / "step-5")
    res = CliRunner().invoke(main, ["sample", "a photo of two squares", "--checkpoint", str(tmp_path / "step-5"),
                                    "--out", str(tmp_path / "OUT")])
    assert res.exit_code == 2, res.output
    assert "text_attends_image" in res.output and f"--model shapes:{tmp_path / 'step-5'}" in res.output
    assert "Traceback" not in res.output
    assert load(f"shapes:{tmp_path / 'step-5'}", device="cpu").cfg.text_attends_image is True
