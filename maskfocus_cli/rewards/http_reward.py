"""Reward computed by a remote server (another process, GPU or machine).

Why: reward models often need their own environment or GPU (Flow-GRPO and
ddpo-pytorch run them behind an HTTP server). Host any registered reward with
``python -m maskfocus_cli.rewards.serve NAME --port 8000 --option k=v`` and use::

    rewards:
      - name: http
        options: {url: "http://gpu-box:8000/", timeout: 120, retries: 3}

Protocol (JSON both ways, version 1):

* request: ``POST url`` with ``Content-Type: application/json`` and body
  ``{"prompts": [str, ...], "metadata": [dict | null, ...], "images": [base64 PNG, ...]}``
  (images are 8-bit RGB PNGs of the (B, 3, H, W) batch, one per prompt);
* response 200: ``{"scores": [float | null, ...]}`` with one entry per image;
  ``null`` stands for a non-finite score (JSON has no NaN) and comes back as NaN,
  which the composite reward flags invalid;
* errors: any non-200 status with ``{"error": "message"}``.

Flow-GRPO's server exchanges *pickled* payloads of JPEG bytes; ours is JSON with
lossless PNG, so neither side unpickles untrusted data and any language can serve it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from maskfocus_cli.errors import UserError


class RewardServerError(RuntimeError, UserError):
    """The reward server could not be reached or answered badly."""


def images_to_png_b64(images: torch.Tensor) -> list[str]:
    """(B, 3, H, W) in [0, 1] -> base64 PNG strings (rounded to 8 bits, like a saved image)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def png_b64_to_images(data: Sequence[str]) -> torch.Tensor:
    """Inverse of ``images_to_png_b64``: (B, 3, H, W) float in [0, 1]; all images must share a size."""
    arrs = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")) for s in data]
    if len({a.shape for a in arrs}) > 1:
        raise ValueError(f"images have different sizes: {sorted({a.shape for a in arrs})}")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous().float() / 255.0


def scores_to_json(scores: torch.Tensor) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in torch.as_tensor(scores).double().tolist()]


def scores_from_json(values: Sequence[float | None]) -> torch.Tensor:
    return torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)


def encode_request(images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict | None]) -> bytes:
    return json.dumps({"prompts": list(prompts), "metadata": list(metadata),
                       "images": images_to_png_b64(images)}).encode("utf-8")


class HttpReward:
    """POST the batch to ``url``; retry connection failures, timeouts and 5xx with backoff.

    Attempt ``i`` (0-based) that fails is followed by a sleep of ``backoff * 2**i`` seconds;
    after ``1 + retries`` failed attempts a ``RewardServerError`` names the URL and the last
    error. 4xx answers are not retried (the request itself is wrong).
    """

    def __init__(self, url: str | None = None, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0) -> None:
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"http reward needs option url=http://HOST:PORT/ (got {url!r}); start a server with "
                             "`python -m maskfocus_cli.rewards.serve NAME --port PORT`")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"http reward: need timeout > 0, retries >= 0, backoff >= 0 "
                             f"(got {timeout}, {retries}, {backoff})")
        self.url, self.timeout, self.retries, self.backoff = url, float(timeout), int(retries), float(backoff)

    def preflight(self) -> None:
        """Connect to the server once, with the same retries, before any rollout: a server that is down
        fails the run in seconds, not after the first rollout batch (minutes on a big model). A TCP connect,
        not a request: the protocol has no health route, and any server that accepts connections passes."""
        parts = urllib.parse.urlsplit(self.url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        last: Exception | None = None
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with socket.create_connection((host, port), timeout=self.timeout):
                    return
            except OSError as e:
                last = e
        raise RewardServerError(
            f"reward server at {self.url} cannot be reached ({1 + self.retries} attempt(s)): {last}; check that it "
            "is running (python -m maskfocus_cli.rewards.serve ...) and the url option")

    def _post(self, body: bytes) -> dict:
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:
        b = images.shape[0]
        metadata = [None] * b if metadata is None else list(metadata)
        body = encode_request(images, prompts, metadata)
        last: Exception | None = None
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                answer = self._post(body)
                break
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                if e.code < 500:
                    raise RewardServerError(f"reward server at {self.url} rejected the request "
                                            f"(HTTP {e.code}): {detail}") from e
                last = RewardServerError(f"HTTP {e.code}: {detail}")
            except json.JSONDecodeError as e:
                raise RewardServerError(f"reward server at {self.url} answered with invalid JSON: {e}") from e
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = e
        else:
            raise RewardServerError(
                f"reward server at {self.url} failed after {1 + self.retries} attempt(s): {last}; "
                "check that it is running (python -m maskfocus_cli.rewards.serve ...) and the url option")
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list) or len(scores) != b:
            raise RewardServerError(f"reward server at {self.url} answered {str(answer)[:200]!r}; "
                                    f"expected {{\"scores\": [{b} numbers]}}")
        return scores_from_json(scores)
