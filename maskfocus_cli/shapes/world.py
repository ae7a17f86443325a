"""The shapes world: scenes of coloured shapes and GenEval-format prompts about them.

Geometry is fixed so a VQ patch codebook can represent every render exactly:
64×64 RGB canvas, 8×8 token grid of 8×8-pixel patches, objects that occupy whole
patches (``size`` × ``size`` tokens) and never touch (at least one empty token
between any two objects), so each patch holds at most one object plus background
and the pixel-space detector stays exact.

Prompts follow GenEval's generator (``prompts/create_prompts.py``) word for word:
"a photo of {a|an} ...", plural = name + "s" (+ "es" after a final "s"), counting
rows carry an ``exclude`` clause with count + 1, position rows list the reference
object first and the subject second with ``"position": [relation, 0]``.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from maskfocus_cli.bench.geneval import relative_position

IMAGE_SIZE = 64  #: canvas side in pixels
PATCH = 8  #: pixels per token side
GRID = IMAGE_SIZE // PATCH  #: tokens per canvas side
SIZES = (2, 3)  #: object sizes, in tokens per side
MAX_OBJECTS_PER_SCENE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
#: GenEval's ten colour names, in GenEval's order; every one is an object colour here.
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
                           "black", "white")
#: Palette chosen so every pair (background included) is > 100 apart in RGB.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 130, 0),
    "yellow": (255, 235, 0),
    "green": (20, 160, 40),
    "blue": (30, 60, 230),
    "purple": (140, 40, 190),
    "pink": (255, 120, 200),
    "brown": (120, 70, 20),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
#: Mid grey: not a GenEval colour name, far from every object colour.
BACKGROUND_RGB: tuple[int, int, int] = (128, 128, 128)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position",
                                 "color_attr")
NUMBERS: dict[str, int] = {"two": 2, "three": 3, "four": 4}
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.2  #: share of each tag's prompts reserved for evaluation
#: scene_for makes position relations hold even at this (stricter than GenEval's 0.1) shrink
POSITION_MARGIN = 0.2


@dataclass(frozen=True)
class ShapeObject:
    """One object: token coordinates of its top-left patch and its side in patches."""

    shape: str
    color: str
    row: int
    col: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1), x1/y1 exclusive: what the detector must return."""
        return (self.col * PATCH, self.row * PATCH, (self.col + self.size) * PATCH,
                (self.row + self.size) * PATCH)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]


# ----------------------------------------------------------------------------- words
def with_article(word: str) -> str:
    """GenEval's rule: "an" before a vowel letter."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def plural(name: str) -> str:
    """GenEval's rule: +"es" after a final "s", else +"s"."""
    return f"{name}es" if name.endswith("s") else f"{name}s"


_PLURALS = {plural(s): s for s in SHAPES}
_NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}


def vocabulary() -> list[str]:
    """Every word a prompt may contain, in a fixed order (text encoders index it)."""
    words = ["a", "an", "photo", "of", "and", *NUMBERS, "left", "right", "above", "below",
             *COLORS, *SHAPES, *_PLURALS]
    return list(dict.fromkeys(words))


_VOCAB = frozenset(vocabulary())


def tokenize_prompt(prompt: str) -> list[str]:
    """Lower-case words of a prompt; trailing punctuation is dropped, unknown words rejected."""
    words = [w.strip(".,;:!?\"'") for w in prompt.lower().split()]
    words = [w for w in words if w]
    for w in words:
        if w not in _VOCAB:
            raise ValueError(
                f"unknown word {w!r} in prompt {prompt!r}: the shapes world only knows words such as "
                f"{', '.join(list(SHAPES) + list(COLORS[:4]) + ['two', 'left', 'above'])} "
                f"(see maskfocus_cli.shapes.world.vocabulary())")
    return words


# ---------------------------------------------------------------------- metadata
def _clause(shape: str, count: int = 1, color: str | None = None,
            position: tuple[str, int] | None = None) -> dict:
    c: dict = {"class": shape, "count": count}
    if color is not None:
        c["color"] = color
    if position is not None:
        c["position"] = [position[0], position[1]]
    return c


def _noun_phrase(shape: str, count: int = 1, color: str | None = None) -> str:
    if count == 1:
        return with_article(f"{color} {shape}" if color else shape)
    noun = plural(shape)
    return f"{_NUMBER_WORDS[count]} {color} {noun}" if color else f"{_NUMBER_WORDS[count]} {noun}"


def prompt_for(meta: dict) -> str:
    """GenEval metadata → prompt text, with GenEval's templates (works for any class names).

    Position rows read "subject relation reference" (include[1] relative to
    include[0]); everything else joins the noun phrases with "and".
    """
    inc = meta.get("include") or []
    for c in inc:
        if int(c["count"]) != 1 and int(c["count"]) not in _NUMBER_WORDS:
            raise ValueError(f"count {c['count']} has no number word; counts are 1..4")
    nps = [_noun_phrase(c["class"], int(c["count"]), c.get("color")) for c in inc]
    if len(inc) == 2 and "position" in inc[1]:
        rel, target = inc[1]["position"]
        if target != 0:
            raise ValueError(f"position target {target} cannot be phrased; GenEval uses 0")
        return f"a photo of {nps[1]} {rel} {nps[0]}"
    if not nps or any("position" in c for c in inc):
        raise ValueError(f"cannot phrase metadata {meta!r}: expected 1-2 include clauses, "
                         f"a position only on the second")
    return "a photo of " + " and ".join(nps)


def _row(tag: str, include: list[dict], prompt: str) -> dict:
    row: dict = {"tag": tag, "include": include}
    excl = [{"class": c["class"], "count": c["count"] + 1} for c in include if c["count"] > 1]
    if excl:
        row["exclude"] = excl
    row["prompt"] = prompt
    return row


def _enumerate_tag(tag: str) -> list[dict]:
    """Every GenEval-template prompt of one tag, in a fixed order."""
    rows = []
    if tag == "single_object":
        for s in SHAPES:
            rows.append(_row(tag, [_clause(s)], f"a photo of {_noun_phrase(s)}"))
    elif tag == "two_object":
        for a, b in itertools.permutations(SHAPES, 2):
            rows.append(_row(tag, [_clause(a), _clause(b)],
                             f"a photo of {_noun_phrase(a)} and {_noun_phrase(b)}"))
    elif tag == "counting":
        for s in SHAPES:
            for n in NUMBERS.values():
                rows.append(_row(tag, [_clause(s, n)], f"a photo of {_noun_phrase(s, n)}"))
    elif tag == "colors":
        for s in SHAPES:
            for c in COLORS:
                rows.append(_row(tag, [_clause(s, color=c)], f"a photo of {_noun_phrase(s, 1, c)}"))
    elif tag == "position":
        for a, b in itertools.permutations(SHAPES, 2):
            for rel in RELATIONS:
                rows.append(_row(tag, [_clause(b), _clause(a, position=(rel, 0))],
                                 f"a photo of {_noun_phrase(a)} {rel} {_noun_phrase(b)}"))
    elif tag == "color_attr":
        for a, b in itertools.permutations(SHAPES, 2):
            for ca, cb in itertools.permutations(COLORS, 2):
                rows.append(_row(tag, [_clause(a, color=ca), _clause(b, color=cb)],
                                 f"a photo of {_noun_phrase(a, 1, ca)} and {_noun_phrase(b, 1, cb)}"))
    else:
        raise ValueError(f"unknown GenEval tag {tag!r}; use one of {', '.join(GENEVAL_TAGS)}")
    return rows


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@lru_cache(maxsize=None)
def _split_table() -> dict[str, dict[str, tuple[dict, ...]]]:
    """Per tag, the prompts ranked by a stable hash; the lowest ~20% are held out.

    Stratifying by tag guarantees every tag has held-out prompts, even
    single_object which has only len(SHAPES) prompts.
    """
    table: dict[str, dict[str, tuple[dict, ...]]] = {"train": {}, "heldout": {}}
    for tag in GENEVAL_TAGS:
        rows = _enumerate_tag(tag)
        ranked = sorted(range(len(rows)), key=lambda i: _stable_hash(rows[i]["prompt"]))
        n_held = max(1, round(HELDOUT_FRACTION * len(rows)))
        held = set(ranked[:n_held])
        table["heldout"][tag] = tuple(r for i, r in enumerate(rows) if i in held)
        table["train"][tag] = tuple(r for i, r in enumerate(rows) if i not in held)
    return table


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")


def _copy_row(row: dict) -> dict:
    out = {k: v for k, v in row.items()}
    out["include"] = [{k: (list(v) if isinstance(v, list) else v) for k, v in c.items()}
                      for c in row["include"]]
    if "exclude" in row:
        out["exclude"] = [dict(c) for c in row["exclude"]]
    return out


def all_prompts(split: str = "train", tags: Sequence[str] | None = None) -> list[dict]:
    """The whole prompt space of a split (GenEval metadata rows), tag by tag."""
    _check_split(split)
    tags = _check_tags(tags)
    table = _split_table()[split]
    return [_copy_row(r) for t in tags for r in table[t]]


def heldout_prompts() -> frozenset[str]:
    """Every held-out prompt of the template space (the ones ``evaluate --bench shapes`` scores)."""
    return frozenset(r["prompt"] for rows in _split_table()["heldout"].values() for r in rows)


def prompt_split(prompt: str) -> str:
    """Which split a prompt belongs to ('heldout' or 'train').

    Prompts outside the template space (e.g. colour + position) fall back to the
    unstratified hash rule, so the answer is still deterministic.
    """
    train = {r["prompt"] for rows in _split_table()["train"].values() for r in rows}
    if prompt in heldout_prompts():
        return "heldout"
    if prompt in train:
        return "train"
    return "heldout" if _stable_hash(prompt) % 5 == 0 else "train"


def _check_tags(tags: Sequence[str] | None) -> tuple[str, ...]:
    if tags is None:
        return GENEVAL_TAGS
    if isinstance(tags, str):
        tags = [tags]
    bad = [t for t in tags if t not in GENEVAL_TAGS]
    if bad or not tags:
        raise ValueError(f"unknown GenEval tag(s) {bad or tags}; use some of {', '.join(GENEVAL_TAGS)}")
    return tuple(tags)


def make_metadata(n: int, seed: int, tags: Sequence[str] | None = None,
                  split: str = "train") -> list[dict]:
    """n GenEval metadata rows drawn from one split, tags balanced round-robin.

    Within a tag the prompts are dealt from a shuffled deck, reshuffled when it runs
    out: every prompt of the tag is used before any repeats, so a tag with few
    prompts (held-out counting has 3) weighs each of them equally instead of
    whatever a draw with replacement happens to give (it gave 56/16/56 images).
    """
    _check_split(split)
    tags = _check_tags(tags)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    table = _split_table()[split]
    decks: dict[str, list[dict]] = {t: [] for t in tags}
    rows = []
    for i in range(n):
        tag = tags[i % len(tags)]
        if not decks[tag]:
            decks[tag] = list(table[tag])
            rng.shuffle(decks[tag])
        rows.append(_copy_row(decks[tag].pop()))
    return rows


# --------------------------------------------------------------------- parsing
_RELATION_WORDS = {("left", "of"): "left of", ("right", "of"): "right of", ("above",): "above",
                   ("below",): "below"}


def _parse_np(words: list[str], i: int, prompt: str) -> tuple[dict, int]:
    """'a red circle' / 'two green triangles' starting at words[i] → (clause, next index)."""
    def fail(what: str) -> ValueError:
        return ValueError(f"cannot parse prompt {prompt!r}: {what} "
                          f"(expected e.g. 'a photo of a red circle left of two blue squares')")

    if i >= len(words):
        raise fail("it ends where an object was expected")
    det = words[i]
    if det in ("a", "an"):
        count = 1
    elif det in NUMBERS:
        count = NUMBERS[det]
    else:
        raise fail(f"expected 'a', 'an' or a number before an object, found {det!r}")
    i += 1
    color = None
    if i < len(words) and words[i] in COLOR_RGB:
        color = words[i]
        i += 1
    if i >= len(words):
        raise fail("it ends where a shape name was expected")
    noun = words[i]
    if count == 1:
        if noun not in SHAPES:
            raise fail(f"expected a singular shape name after {det!r}, found {noun!r}")
        shape = noun
    else:
        if noun not in _PLURALS:
            raise fail(f"expected a plural shape name after {det!r}, found {noun!r}")
        shape = _PLURALS[noun]
    return _clause(shape, count, color), i + 1


def parse_prompt(prompt: str) -> dict:
    """Prompt text → GenEval metadata (inverse of the generator, plus colour/count mixes)."""
    words = tokenize_prompt(prompt)
    if words[:3] != ["a", "photo", "of"]:
        raise ValueError(f"cannot parse prompt {prompt!r}: shapes prompts start with 'a photo of'")
    first, i = _parse_np(words, 3, prompt)
    if i == len(words):
        tag = "counting" if first["count"] > 1 else "colors" if "color" in first else "single_object"
        return _row(tag, [first], prompt)
    rel = None
    for key, name in _RELATION_WORDS.items():
        if tuple(words[i:i + len(key)]) == key:
            rel, i = name, i + len(key)
            break
    if rel is None and words[i] == "and":
        i += 1
    elif rel is None:
        raise ValueError(f"cannot parse prompt {prompt!r}: expected 'and' or a relation "
                         f"({', '.join(RELATIONS)}) after the first object, found {words[i]!r}")
    second, i = _parse_np(words, i, prompt)
    if i != len(words):
        raise ValueError(f"cannot parse prompt {prompt!r}: unexpected words after the second object: "
                         f"{' '.join(words[i:])!r}")
    if rel is not None:
        first["position"] = [rel, 0]
        return _row("position", [second, first], prompt)
    clauses = [first, second]
    if any(c["count"] > 1 for c in clauses):
        tag = "counting"
    elif any("color" in c for c in clauses):
        tag = "color_attr"
    else:
        tag = "two_object"
    return _row(tag, clauses, prompt)


# ---------------------------------------------------------------------- scenes
def _rel_ok(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    return relation in relative_position(a.box, b.box, thr=POSITION_MARGIN)


def _free(placed: list[ShapeObject], row: int, col: int, size: int) -> bool:
    """No overlap and at least one empty token between the new object and every placed one."""
    for o in placed:
        if (row < o.row + o.size + 1 and o.row < row + size + 1
                and col < o.col + o.size + 1 and o.col < col + size + 1):
            return False
    return True


def _place(specs: list[tuple[str, str, int]], rng: random.Random,
           relations: list[tuple[int, str, int]], tries: int = 200) -> tuple[ShapeObject, ...] | None:
    """Place objects one by one on free cells that keep every relation (subject, rel, target)
    whose two ends are placed; restart on a dead end."""
    for _ in range(tries):
        placed: list[ShapeObject] = []
        for k, (shape, color, size) in enumerate(specs):
            cands = [ShapeObject(shape, color, r, c, size) for r in range(GRID - size + 1)
                     for c in range(GRID - size + 1) if _free(placed, r, c, size)]
            for s, rel, t in relations:
                if s == k and t < k:
                    cands = [o for o in cands if _rel_ok(o, placed[t], rel)]
                elif t == k and s < k:
                    cands = [o for o in cands if _rel_ok(placed[s], o, rel)]
            if not cands:
                break
            placed.append(rng.choice(cands))
        else:
            return tuple(placed)
    return None


def scene_for(meta: dict, rng: random.Random) -> Scene:
    """A random scene that satisfies GenEval metadata exactly (no extra objects).

    Uncoloured objects get random colours, sizes are random, and position
    relations hold with margin (GenEval's rule with a 0.2 instead of 0.1 shrink).
    """
    include = meta.get("include") or []
    if not include:
        raise ValueError("metadata has no include clauses; a scene needs at least one object")
    specs: list[tuple[str, str]] = []
    groups: list[list[int]] = []
    for c in include:
        shape, count = c["class"], int(c["count"])
        if shape not in SHAPES:
            raise ValueError(f"class {shape!r} is not a shape of this world ({', '.join(SHAPES)})")
        color = c.get("color")
        if color is not None and color not in COLOR_RGB:
            raise ValueError(f"colour {color!r} is not in the palette ({', '.join(COLORS)})")
        groups.append(list(range(len(specs), len(specs) + count)))
        specs.extend((shape, color or rng.choice(COLORS)) for _ in range(count))
    if len(specs) > MAX_OBJECTS_PER_SCENE:
        raise ValueError(f"metadata asks for {len(specs)} objects; scenes hold at most "
                         f"{MAX_OBJECTS_PER_SCENE}")
    relations = []
    for gi, c in enumerate(include):
        if "position" in c:
            rel, target = c["position"][0], int(c["position"][1])
            if rel not in RELATIONS or not 0 <= target < gi:
                raise ValueError(f"bad position clause {c['position']!r}: need [relation, index of an "
                                 f"earlier clause], relation one of {', '.join(RELATIONS)}")
            relations += [(s, rel, t) for s in groups[gi] for t in groups[target]]
    for shrink in (False, True):  # crowded scenes fall back to small objects
        sized = [(s, col, 2 if shrink else rng.choice(SIZES)) for s, col in specs]
        objs = _place(sized, rng, relations)
        if objs is not None:
            return Scene(objs)
    raise ValueError(f"could not place a scene for {meta.get('prompt', meta)!r}")


def random_scene(rng: random.Random, max_objects: int = MAX_OBJECTS_PER_SCENE) -> Scene:
    """1..max_objects objects of random shape, colour and size (codebook fitting, tests)."""
    n = rng.randint(1, max_objects)
    for shrink in (False, True):
        specs = [(rng.choice(SHAPES), rng.choice(COLORS), 2 if shrink else rng.choice(SIZES))
                 for _ in range(n)]
        objs = _place(specs, rng, [], tries=50)
        if objs is not None:
            return Scene(objs)
    raise RuntimeError("unreachable: small objects always fit")  # pragma: no cover
