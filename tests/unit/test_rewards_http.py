"""Wire format of the http reward (no sockets here; see tests/integration/test_reward_server.py)."""

import base64
import json
import math

import pytest
import torch

from maskfocus_cli.rewards import make_reward
from maskfocus_cli.rewards.http_reward import (
    encode_request, images_to_png_b64, png_b64_to_images, scores_from_json, scores_to_json,
)
from maskfocus_cli.rewards.serve import _parse_options


def grid_images(b=3, h=5, w=7, seed=0):
    """Images already on the 8-bit grid, so a PNG round trip must be exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 255


def test_png_round_trip_is_exact_on_8bit_images():
    x = grid_images()
    encoded = images_to_png_b64(x)
    assert len(encoded) == 3 and base64.b64decode(encoded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.equal(png_b64_to_images(encoded), x)


def test_png_rounds_to_nearest_level():
    x = torch.full((1, 3, 2, 2), 0.5)  # 127.5 -> 128
    assert torch.allclose(png_b64_to_images(images_to_png_b64(x)), torch.full((1, 3, 2, 2), 128 / 255))


def test_mixed_sizes_rejected():
    a = images_to_png_b64(grid_images(1, 4, 4)) + images_to_png_b64(grid_images(1, 5, 4))
    with pytest.raises(ValueError, match="different sizes"):
        png_b64_to_images(a)


def test_non_finite_scores_travel_as_null():
    values = scores_to_json(torch.tensor([1.5, float("nan"), float("inf"), -2.0]))
    assert values == [1.5, None, None, -2.0]
    assert json.loads(json.dumps(values)) == values  # strict JSON, no NaN literal
    back = scores_from_json(values)
    assert back[0] == 1.5 and math.isnan(back[1]) and math.isnan(back[2]) and back[3] == -2.0


def test_request_body_fields():
    body = json.loads(encode_request(grid_images(2), ["a", "b"], [{"tag": "x"}, None]))
    assert set(body) == {"prompts", "metadata", "images"}
    assert body["prompts"] == ["a", "b"] and body["metadata"] == [{"tag": "x"}, None]
    assert len(body["images"]) == 2


@pytest.mark.parametrize("opts, match", [
    ({}, "url="),
    ({"url": "localhost:8000"}, "url="),
    ({"url": "http://h/", "timeout": 0}, "timeout > 0"),
    ({"url": "http://h/", "retries": -1}, "retries >= 0"),
])
def test_http_reward_option_errors(opts, match):
    with pytest.raises(ValueError, match=match):
        make_reward("http", **opts)


def test_serve_option_parsing():
    assert _parse_options(["weights=/m/x.pt", "w=2.5", "clamp=false"]) == {
        "weights": "/m/x.pt", "w": 2.5, "clamp": False}
    with pytest.raises(SystemExit):
        _parse_options(["novalue"])
