"""Serve any reward over HTTP (the protocol of ``http_reward``), stdlib only.

Use it to keep a heavy reward model on its own GPU / process / environment::

    python -m maskfocus_cli.rewards.serve hpsv2 --port 8000 --option weights=/models/HPS_v2.1_compressed.pt

then point the ``http`` reward at ``http://HOST:8000/``. ``GET /health`` answers
``{"status": "ok", "reward": NAME}``. Requests are scored one at a time (a lock
around the reward) because reward models are rarely thread-safe.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import yaml

from maskfocus_cli.rewards.http_reward import png_b64_to_images, scores_to_json

log = logging.getLogger(__name__)


def _handler(reward_fn: Callable, name: str) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") == "/health":
                self._reply(200, {"status": "ok", "reward": name})
            else:
                self._reply(404, {"error": f"unknown path {self.path}; POST to / or GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n).decode("utf-8"))
                prompts, images_b64 = req["prompts"], req["images"]
                metadata = req.get("metadata") or [None] * len(prompts)
                if not (len(prompts) == len(images_b64) == len(metadata)):
                    raise ValueError(f"{len(images_b64)} images, {len(prompts)} prompts, "
                                     f"{len(metadata)} metadata entries")
                images = png_b64_to_images(images_b64)
            except (ValueError, KeyError, TypeError) as e:
                self._reply(400, {"error": f"bad request: {e!r}"})
                return
            try:
                with lock:
                    scores = reward_fn(images, list(prompts), list(metadata))
                self._reply(200, {"scores": scores_to_json(scores)})
            except Exception as e:  # the client must see why; the server keeps running
                log.exception("reward failed")
                self._reply(500, {"error": f"reward {name!r} failed: {e!r}"})

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s - %s", self.address_string(), fmt % args)

    return Handler


def make_server(reward_fn: Callable, host: str = "127.0.0.1", port: int = 8000,
                name: str = "reward") -> ThreadingHTTPServer:
    """A ready (not yet running) server; ``port=0`` picks a free port (see ``server_address``)."""
    server = ThreadingHTTPServer((host, port), _handler(reward_fn, name))
    server.daemon_threads = True
    return server


def serve(reward_fn: Callable, host: str = "127.0.0.1", port: int = 8000, name: str = "reward") -> None:
    """Serve ``reward_fn`` until interrupted."""
    server = make_server(reward_fn, host, port, name)
    log.warning("serving reward %r on http://%s:%d/", name, *server.server_address[:2])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _parse_options(items: list[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bad --option {item!r}: use KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def main(argv: list[str] | None = None) -> None:
    from maskfocus_cli.rewards.registry import available, make_reward

    p = argparse.ArgumentParser(prog="python -m maskfocus_cli.rewards.serve",
                                description=f"Serve a reward over HTTP. Rewards: {', '.join(available())} "
                                            "or package.module:attr")
    p.add_argument("reward")
    p.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to accept other machines")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="reward option (value parsed as YAML), repeatable")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        reward_fn = make_reward(args.reward, **_parse_options(args.option))
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    serve(reward_fn, args.host, args.port, name=args.reward)


if __name__ == "__main__":
    main()
