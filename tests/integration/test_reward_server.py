"""The http reward against a real reward server on 127.0.0.1 (threads, ephemeral ports)."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

import maskfocus_cli.rewards.http_reward as http_reward
from maskfocus_cli.rewards import CompositeReward, NonFiniteRewardWarning, RewardSpec, make_reward, register
from maskfocus_cli.rewards.http_reward import RewardServerError
from maskfocus_cli.rewards.serve import main as serve_main, make_server


class ToyReward:
    """brightness + metadata bonus; NaN for the prompt "nan"; raises for the prompt "boom"."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def __call__(self, images, prompts, metadata):
        if "boom" in prompts:
            raise RuntimeError("toy reward exploded")
        time.sleep(self.delay)
        bonus = torch.tensor([float((m or {}).get("bonus", 0.0)) for m in metadata])
        scores = images.mean(dim=(1, 2, 3)) + bonus
        return torch.where(torch.tensor([p == "nan" for p in prompts]), torch.nan, scores)


register("test-server-toy")(ToyReward)


@pytest.fixture
def server_url():
    servers = []

    def start(reward):
        server = make_server(reward, "127.0.0.1", 0, name="toy")
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def grid_images(b):
    return torch.randint(0, 256, (b, 3, 8, 8), generator=torch.Generator().manual_seed(b)).float() / 255


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_round_trip_matches_local_reward(server_url):
    url = server_url(make_reward("test-server-toy"))
    remote = make_reward("http", url=url, timeout=10)
    x = grid_images(4)
    prompts, meta = ["a", "b", "c", "d"], [None, {"bonus": 1.0}, None, {"bonus": -0.5}]
    assert torch.equal(remote(x, prompts, meta), ToyReward()(x, prompts, meta))


def test_health_endpoint(server_url):
    url = server_url(ToyReward())
    with urllib.request.urlopen(url + "health", timeout=5) as r:
        assert json.loads(r.read()) == {"status": "ok", "reward": "toy"}


def test_remote_nan_is_flagged_by_composite(server_url):
    url = server_url(ToyReward())
    comp = CompositeReward([RewardSpec("http", 1.0, {"url": url})])
    with pytest.warns(NonFiniteRewardWarning):
        out = comp(grid_images(3), ["a", "nan", "c"], None)
    assert out.valid.tolist() == [True, False, True]
    assert torch.isfinite(out.total).all() and out.total[1] == 0


def test_reward_exception_is_retried_then_reported(server_url, monkeypatch):
    sleeps = []
    monkeypatch.setattr(http_reward.time, "sleep", sleeps.append)
    url = server_url(ToyReward())
    remote = make_reward("http", url=url, timeout=5, retries=2, backoff=0.01)
    with pytest.raises(RewardServerError, match=r"failed after 3 attempt\(s\).*HTTP 500.*toy reward exploded"):
        remote(grid_images(2), ["boom", "x"], None)
    assert sleeps == [0.01, 0.02]


def test_bad_request_is_400_and_not_retried(server_url):
    url = server_url(ToyReward())
    body = json.dumps({"prompts": ["a", "b"], "images": []}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400 and "0 images, 2 prompts" in e.value.read().decode()


def test_server_down_retries_then_clear_error(monkeypatch):
    sleeps = []
    monkeypatch.setattr(http_reward.time, "sleep", sleeps.append)
    url = f"http://127.0.0.1:{free_port()}/"
    remote = make_reward("http", url=url, timeout=0.5, retries=3, backoff=0.001)
    with pytest.raises(RewardServerError) as e:
        remote(grid_images(1), ["a"], None)
    msg = str(e.value)
    assert url in msg and "4 attempt(s)" in msg and "rewards.serve" in msg
    assert sleeps == [0.001, 0.002, 0.004]


def test_timeout_is_an_error(server_url):
    url = server_url(ToyReward(delay=1.0))
    remote = make_reward("http", url=url, timeout=0.2, retries=0)
    t0 = time.monotonic()
    with pytest.raises(RewardServerError, match="timed out"):
        remote(grid_images(1), ["a"], None)
    assert time.monotonic() - t0 < 0.9


def test_serve_main_rejects_unknown_reward(capsys):
    with pytest.raises(SystemExit) as e:
        serve_main(["no-such-reward", "--port", "0"])
    assert e.value.code == 2 and "unknown reward" in capsys.readouterr().err


def test_preflight_connects_once_and_a_server_that_is_down_fails_after_its_retries(server_url):
    up = http_reward.HttpReward(server_url(ToyReward()), timeout=2.0, retries=0)
    up.preflight()  # a running server: nothing to say
    down = http_reward.HttpReward(f"http://127.0.0.1:{free_port()}/", timeout=0.5, retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(RewardServerError, match=r"cannot be reached \(3 attempt\(s\)\)"):
        down.preflight()
    assert time.monotonic() - t0 >= 0.03  # the backoff ran: 0.01 + 0.02


def test_a_run_scored_by_a_server_that_is_down_fails_before_any_rollout(tmp_path, tiny_shapes_dir):
    from click.testing import CliRunner

    from maskfocus_cli.cli import main
    recipe = tmp_path / "r.yaml"
    url = f"http://127.0.0.1:{free_port()}/"
    recipe.write_text(f"""
model: {{spec: "shapes:{tiny_shapes_dir}"}}
sampler: {{steps: 4}}
critical: {{k: 2}}
rewards: [{{name: http, options: {{url: "{url}", timeout: 0.5, retries: 0}}}}]
train: {{iterations: 1, prompts_per_iter: 2, group_size: 2}}
output: {{dir: "{tmp_path / 'run'}"}}
data: {{num_eval_prompts: 0}}
""")
    res = CliRunner().invoke(main, ["train", str(recipe)])
    assert res.exit_code == 2 and "cannot be reached" in res.stderr and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists()
