"""Options and helpers shared by the subcommands (one definition, one behaviour)."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from maskfocus_cli.engine.data import read_utf8
from maskfocus_cli.engine.sampling import SamplerSettings

stderr = Console(stderr=True)


def model_options(f: Callable) -> Callable:
    """--model / --checkpoint / --device / --dtype."""
    f = click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
                     help="Weights dtype. bf16 samples ~1.8x faster on CPUs with AVX-512 BF16 or AMX "
                          "(and on GPUs); images then differ slightly from fp32 ones.")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")(f)
    f = click.option("--checkpoint", default=None, metavar="PATH",
                     help="Training checkpoint folder (runs/X/checkpoints/step-N) whose weights to use.")(f)
    f = click.option("--model", "model_spec", default="shapes", show_default=True, metavar="SPEC",
                     help="shapes (built-in) | shapes:DIR | amused:DIR | meissonic:DIR | showo:DIR.")(f)
    return f


#: torch.Generator.manual_seed takes up to 2**64 - 1; seeds stop at 2**63 - 1 to leave room for seed + k·n + j
MAX_SEED = 2**63 - 1


def check_seed_room(seed: int, prompts: list[str], n: int) -> None:
    """Image j of a prompt's k-th listing gets seed ``seed + k·n + j`` (``make_jobs``): every such seed must be a
    valid --seed too, or a printed seed could not regenerate its image."""
    if not prompts:
        return
    top = max(Counter(prompts).values()) * n - 1  # the highest offset any image gets
    if seed + top > MAX_SEED:
        raise ValueError(f"--seed {seed} leaves no room for the image seeds (they run up to --seed + {top}, above "
                         f"{MAX_SEED}); use --seed {MAX_SEED - top} or less")


ROUTING_HELP = ("each batch is split at its median entropy, so images depend on --batch-size (a batch of one "
                "never explores)")


class CheckedInt(click.IntRange):
    """An integer option within bounds, checked while parsing (before any model loads). Raises ValueError, so
    the error is the CLI's usual one line + exit 2 (as CheckedFloat's) instead of click's usage block."""

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            flag = param.opts[0] if param is not None and param.opts else "value"
            rule = f">= {self.min}" if self.max is None else f"from {self.min} to {self.max}"
            raise ValueError(f"{flag} must be an integer {rule} (got {value})") from None


def remove_if_left_empty(folder: str | Path) -> None:
    """Call before creating ``folder``: when the command ends (failed) and has left the folders it created
    empty, remove them, so a run that failed leaves no empty --out behind. Existing folders are never touched."""
    new, p = [], Path(folder).absolute()
    while not p.exists():
        new.append(p)  # deepest first
        p = p.parent

    def cleanup() -> None:
        for d in new:
            try:
                d.rmdir()
            except OSError:  # not empty: a run put something there
                return
    click.get_current_context().call_on_close(cleanup)


class CheckedFloat(click.ParamType):
    """A float option that must be finite (and above a bound): NaN/inf would sample noise and print
    invalid JSON. Raises ValueError, so the error is the CLI's usual one line + exit 2."""

    name = "float"

    def __init__(self, minimum: float | None = None, strict: bool = False) -> None:
        self.minimum, self.strict = minimum, strict

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None) -> float:
        x = click.FLOAT.convert(value, param, ctx)
        flag = param.opts[0] if param is not None and param.opts else "value"
        if self.minimum is None:
            rule, ok = "a finite number", math.isfinite(x)
        else:
            bound = f"{'>' if self.strict else '>='} {self.minimum:g}"
            rule = f"a finite number {bound}"
            ok = math.isfinite(x) and (x > self.minimum if self.strict else x >= self.minimum)
        if not ok:
            raise ValueError(f"{flag} must be {rule} (got {value})")
        return x


def sampler_options(f: Callable) -> Callable:
    """--steps / --cfg / --schedule / --temperature / --gumbel; the first three default to the model family's own
    settings (``models/sampler_defaults.py``), resolved by ``settings_from``."""
    from maskfocus_cli.models.sampler_defaults import defaults_help
    family = "[default: the model family's own"
    f = click.option("--gumbel", "gumbel", default=None, type=CheckedFloat(0.0),
                     help=f"Start of the annealed Gumbel noise on confidences (0 = greedy re-masking) {family}].")(f)
    f = click.option("--negative-prompt", "negative_prompt", default=None, metavar="TEXT",
                     help="Prompt of guidance's unconditional branch [default: the model family's own: none, except "
                          "Meissonic, whose official scripts (and MaskFocus) use a fixed list of defects; '' turns "
                          "it off]."
                     )(f)
    f = click.option("--temperature", default=1.0, show_default=True, type=CheckedFloat(0.0, strict=True),
                     help="Logit temperature of token sampling.")(f)
    f = click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "linear"]),
                     help="Mask-ratio schedule.")(f)
    f = click.option("--cfg", default=None, type=CheckedFloat(),
                     help=f"Classifier-free guidance scale, in the family's form {family}].")(f)
    f = click.option("--steps", default=None, type=CheckedInt(1),
                     help=f"Unmasking steps T {family}; steps / cfg / gumbel: {defaults_help()}].")(f)
    return f


def settings_from(model_spec: str, steps: int | None, cfg: float | None, schedule: str, temperature: float,
                  gumbel: float | None, negative_prompt: str | None = None) -> SamplerSettings:
    """The sampler settings: what was given, else the model family's own (known from the spec, before loading);
    resolved as a recipe's sampler section is."""
    from types import SimpleNamespace

    from maskfocus_cli.engine.settings import sampler_settings
    return sampler_settings(SimpleNamespace(steps=steps, guidance_scale=cfg, schedule=schedule,
                                            logit_temperature=temperature, gumbel_temperature=gumbel,
                                            negative_prompt=negative_prompt), model_spec)


def read_prompts(args: tuple[str, ...], prompts_file: str | None) -> tuple[list[str], list[dict | None]]:
    """Prompts from arguments, a file, or stdin ('-'); .jsonl files give GenEval metadata rows too."""
    prompts: list[str] = list(args)
    metas: list[dict | None] = [None] * len(prompts)
    if prompts_file is not None:
        if prompts_file == "-":
            try:
                text = sys.stdin.read()
                text.encode("utf-8")  # a C-locale stdin turns bad bytes into surrogates instead of failing
            except (UnicodeDecodeError, UnicodeEncodeError):
                raise ValueError("--prompts - (stdin) is not UTF-8 text (send UTF-8)") from None
            lines = text.removeprefix("\ufeff").splitlines()
            name = "stdin"
        else:
            p = Path(prompts_file)
            if not p.is_file():
                what = "is a folder, not a prompt file" if p.is_dir() else "prompt file not found"
                raise ValueError(f"--prompts {prompts_file}: {what} (one prompt per line, or '-' for stdin)")
            lines = read_utf8(p, "--prompts").splitlines()
            name = str(p)
        for i, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    row = json.loads(line)
                    prompt = str(row["prompt"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{name} line {i}: not a JSON object with a 'prompt' field") from None
                if not prompt.strip():
                    raise ValueError(f"{name} line {i}: the 'prompt' field is empty")
                prompts.append(prompt)
                metas.append(row)
            else:
                prompts.append(line)
                metas.append(None)
    prompts = [p.strip() for p in prompts]
    if any(not p for p in prompts):
        raise ValueError("an empty prompt was given: every prompt needs some text")
    if not prompts and prompts_file is not None:
        raise ValueError(f"--prompts {'stdin' if prompts_file == '-' else prompts_file} holds no prompts "
                         "(one prompt per line, or GenEval .jsonl rows)")
    if not prompts:
        raise ValueError("no prompts given: pass prompts as arguments, --prompts FILE, or --prompts - (stdin)")
    return prompts, metas


def _probe_dir(folder: Path) -> None:
    """Create ``folder`` and write (then remove) a file in it: raises the OSError a real write would."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe")
    os.close(fd)
    os.unlink(probe)


def ensure_writable_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder and prove we can write in it (fail before any work)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write to {option} {path}: it is a file, not a folder (choose a writable folder)")
    try:
        _probe_dir(out)
    except OSError as e:
        raise ValueError(f"cannot write to {option} {path}: {e.strerror or e} (choose a writable folder)") from None
    return out


def ensure_writable_file(path: str | Path, option: str) -> Path:
    """Prove ``path`` can be written (as atomic_write_bytes will: a temp file next to it) before the work
    whose result goes there, so a bad path does not waste a whole run."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"cannot write to {option} {path}: it is a folder (give a file name)")
    if p.parent.exists() and not p.parent.is_dir():  # mkdir would only say "File exists"
        raise ValueError(f"cannot write to {option} {path}: {p.parent} is a file, not a folder "
                         "(choose a file in a writable folder)")
    try:
        _probe_dir(p.parent)
    except OSError as e:
        raise ValueError(f"cannot write to {option} {path}: {e.strerror or e} "
                         "(choose a file in a writable folder)") from None
    return p


def emit(row: dict) -> None:
    """One JSON line on stdout (the only thing that ever goes to stdout)."""
    click.echo(json.dumps(row, ensure_ascii=False))


def plural(n: int, word: str) -> str:
    """'1 image', '2 images'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def silence_stdout() -> None:
    """Point stdout at the null device after its reader went away, so later writes (and the interpreter's
    final flush) do not raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file (e.g. a test runner's buffer)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    finally:
        os.close(devnull)


def progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=False)


#: sampler parameter of the commands → SamplerSettings field it sets, where the family supplies the default
FAMILY_PARAMS = {"steps": "steps", "cfg": "guidance_scale", "gumbel": "gumbel_temperature",
                 "negative_prompt": "negative_prompt"}


def training_settings_note(checkpoint: str | None, settings: SamplerSettings,
                           given: Callable[[str], bool]) -> str | None:
    """A one-line note when a training checkpoint's run watched its grids with other sampler settings than the
    family defaults this command is about to use (options given explicitly are the user's choice)."""
    if not checkpoint:
        return None
    info_path = Path(checkpoint) / "trainer.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):  # the weights are what this command needs: a damaged record only loses the note
        return None
    ev = info.get("eval_sampler") if isinstance(info, dict) else None
    if not isinstance(ev, dict):
        return None
    from maskfocus_cli.engine.settings import differing_options
    differ = differing_options(ev, settings, [f for name, f in FAMILY_PARAMS.items() if not given(name)])
    if not differ:
        return None
    return (f"note: this checkpoint's run drew its sample grids with {' '.join(differ)}; this run uses the model "
            "family's defaults (pass those options to sample it as it was trained)")
