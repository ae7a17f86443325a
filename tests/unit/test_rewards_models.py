"""clip / hpsv2 / pickscore on tiny random-init instances of the real architectures.

Each model is saved in the real on-disk format and re-loaded through the reward's
own loading code; scores are compared with the formula computed directly on the
saved model (a fresh random init would give different numbers).
"""

import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from maskfocus_cli.rewards import make_reward  # noqa: E402
from maskfocus_cli.rewards.preprocess import clip_preprocess  # noqa: E402

ARCH = "maskfocus-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red circle", "a red circle", "two blue squares", "a green triangle left of a circle"]


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A registered tiny open_clip config, a model saved as HPSv2-style and plain checkpoints."""
    d = tmp_path_factory.mktemp("openclip")
    (d / "configs").mkdir()
    (d / "configs" / f"{ARCH}.json").write_text(json.dumps(TINY_CFG))
    wider = json.loads(json.dumps(TINY_CFG))
    wider["vision_cfg"]["width"] = 48
    (d / "configs" / f"{ARCH}-wide.json").write_text(json.dumps(wider))
    open_clip.add_model_config(d / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    torch.save({"epoch": 3, "name": "tiny", "state_dict": model.state_dict()}, d / "hps.pt")
    torch.save(model.state_dict(), d / "clip.pt")
    return model, d


def images(b=4, size=32, seed=1):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_cos(model, imgs, prompts):
    """Cosine of unit open_clip features, computed straight from the saved model."""
    tok = open_clip.get_tokenizer(ARCH)(prompts)
    with torch.no_grad():
        out = model(clip_preprocess(imgs, 32), tok)
    img_f, txt_f = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
    return (img_f * txt_f).sum(-1)


def test_hpsv2_loads_checkpoint_and_scores_like_hps(tiny_open_clip):
    model, d = tiny_open_clip
    torch.manual_seed(123)  # the reward's empty model starts from a different random init
    r = make_reward("hpsv2", weights=str(d / "hps.pt"), arch=ARCH, device="cpu")
    x = images()
    got = r(x, PROMPTS, [None] * 4)
    assert got.shape == (4,) and got.dtype == torch.float32
    assert torch.allclose(got, reference_cos(model, x, PROMPTS), atol=1e-5)
    # resize path: a 64px render scores like its 32px downsample
    big = F.interpolate(x, scale_factor=2, mode="nearest")
    assert torch.allclose(r(big, PROMPTS, [None] * 4), got, atol=5e-2)


def test_hpsv2_missing_weights_says_where_to_get_them(tmp_path):
    with pytest.raises(ValueError, match=r"huggingface.co/xswu/HPSv2.*weights="):
        make_reward("hpsv2")
    with pytest.raises(ValueError, match="not found"):
        make_reward("hpsv2", weights=str(tmp_path / "missing.pt"), arch=ARCH)


def test_hpsv2_wrong_architecture_is_a_clear_error(tiny_open_clip):
    _, d = tiny_open_clip
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        make_reward("hpsv2", weights=str(d / "hps.pt"), arch="ViT-Nope-1")
    with pytest.raises(ValueError, match=f"do not fit open_clip architecture '{ARCH}-wide'"):
        make_reward("hpsv2", weights=str(d / "hps.pt"), arch=f"{ARCH}-wide", device="cpu")


def test_clip_score_formula_and_loading(tiny_open_clip):
    model, d = tiny_open_clip
    torch.manual_seed(321)
    raw = make_reward("clip", model=ARCH, pretrained=str(d / "clip.pt"), w=1.0, clamp=False, device="cpu")
    x = images(seed=2)
    cos = reference_cos(model, x, PROMPTS)
    assert torch.allclose(raw(x, PROMPTS, [None] * 4), cos, atol=1e-5)
    paper = make_reward("clip", model=ARCH, pretrained=str(d / "clip.pt"), device="cpu")
    assert torch.allclose(paper(x, PROMPTS, [None] * 4), 2.5 * cos.clamp_min(0), atol=1e-5)
    # the formula itself on chosen cosines: 2.5 * max(cos, 0)
    paper.scorer.cosine = lambda imgs, prompts: torch.tensor([-0.2, 0.0, 0.4])
    assert torch.allclose(paper(x[:3], PROMPTS[:3], [None] * 3), torch.tensor([0.0, 0.0, 1.0]))


def test_clip_text_features_cached_per_prompt(tiny_open_clip):
    _, d = tiny_open_clip
    r = make_reward("clip", model=ARCH, pretrained=str(d / "clip.pt"), device="cpu")
    seen = []
    tok = r.scorer.tokenizer
    r.scorer.tokenizer = lambda prompts: (seen.extend(prompts), tok(prompts))[1]
    first = r(images(), PROMPTS, [None] * 4)
    second = r(images(), PROMPTS, [None] * 4)
    assert sorted(seen) == sorted(set(PROMPTS))  # 3 distinct prompts, encoded once in total
    assert torch.equal(first, second)


def test_clip_weights_required(tiny_open_clip):
    with pytest.raises(ValueError, match="pretrained"):
        make_reward("clip", model=ARCH)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        make_reward("clip", model=ARCH, pretrained="/no/such/file.bin")
    with pytest.raises(ValueError, match="precision"):
        make_reward("clip", model=ARCH, pretrained="x", precision="fp8")


# --- pickscore (transformers CLIPModel) --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pickscore(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    d = tmp_path_factory.mktemp("pickscore")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in letters:
            vocab[c + suffix] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=1, num_attention_heads=4),
        projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(d)
    return model, d


def test_pickscore_matches_clip_logits(tiny_pickscore):
    from transformers import AutoTokenizer

    model, d = tiny_pickscore
    torch.manual_seed(99)
    r = make_reward("pickscore", path=str(d), device="cpu")
    x = images(seed=3)
    got = r(x, PROMPTS, [None] * 4)
    tok = AutoTokenizer.from_pretrained(d)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                    pixel_values=clip_preprocess(x, 32))
    # PickScore = logit_scale.exp() * cos = CLIP's logits_per_image diagonal
    assert torch.allclose(got, out.logits_per_image.diag(), atol=1e-4)
    assert got.std() > 0


def test_pickscore_path_errors(tiny_pickscore, tmp_path):
    _, d = tiny_pickscore
    with pytest.raises(ValueError, match="PickScore_v1"):
        make_reward("pickscore")
    with pytest.raises(ValueError, match="not found"):
        make_reward("pickscore", path=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="CLIP-ViT-H-14-laion2B"):
        make_reward("pickscore", path=str(d), processor=str(tmp_path))


def test_hpsv2_refuses_pickled_objects_unless_trusted(tiny_open_clip, tmp_path):
    import argparse

    model, _ = tiny_open_clip
    path = tmp_path / "with_args.pt"
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-5)}, path)
    with pytest.raises(ValueError, match="weights_only=false"):
        make_reward("hpsv2", weights=str(path), arch=ARCH, device="cpu")
    r = make_reward("hpsv2", weights=str(path), arch=ARCH, device="cpu", weights_only=False)
    x = images()
    assert torch.allclose(r(x, PROMPTS, [None] * 4), reference_cos(model, x, PROMPTS), atol=1e-5)


def test_weights_of_another_architecture_are_a_one_line_error_naming_the_option(tiny_open_clip):
    from maskfocus_cli.bench.detectors import load_open_clip
    _, d = tiny_open_clip
    with pytest.raises(ValueError, match=f"do not fit open_clip architecture '{ARCH}-wide'.*options.model"):
        make_reward("clip", model=f"{ARCH}-wide", pretrained=str(d / "clip.pt"), device="cpu")
    with pytest.raises(ValueError, match=f"do not fit open_clip architecture '{ARCH}-wide'.*--clip-arch"):
        load_open_clip(f"{ARCH}-wide", d / "clip.pt", option="--clip")
