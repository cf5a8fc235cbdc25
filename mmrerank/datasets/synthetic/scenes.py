"""Scene graphs, their captions, and which scenes satisfy which captions.

A scene is 1-3 objects, each a (colour, shape, size) at a position. A caption is written from a *spec*: up to
three object descriptors (each naming some of colour / shape / size) and at most one spatial relation between
the first two. A scene satisfies a spec when its objects can be assigned one-to-one to the descriptors so
that every named attribute and the relation hold; that decides relevance, for every image, not only the one
the caption was written for.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

COLOURS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 205, 30),
    "purple": (135, 60, 175), "orange": (245, 135, 25), "pink": (240, 125, 185), "cyan": (40, 195, 205),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle", "diamond", "cross", "star", "hexagon"]
SIZES = ["small", "big"]
RELATIONS = ["left", "right", "above", "below"]  # "a left b": a is left of b

SHAPE_WORDS = {"circle": ["circle", "disc"], "square": ["square", "box"], "triangle": ["triangle"],
               "diamond": ["diamond", "rhombus"], "cross": ["cross", "plus sign"], "star": ["star"],
               "hexagon": ["hexagon"]}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "big": ["big", "large"]}
RELATION_WORDS = {"left": ["to the left of", "left of", "on the left of"],
                  "right": ["to the right of", "right of", "on the right of"],
                  "above": ["above", "over", "on top of"], "below": ["below", "under", "beneath"]}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
MARGIN = 0.1  # fraction of the side by which centres must differ for a relation to hold: no borderline cases
MAX_OBJECTS = 3
UNUSED = -2  # descriptor slot not used by a caption


@dataclass
class Obj:
    colour: int
    shape: int
    size: int  # 0 small, 1 big
    x: float  # centre, as a fraction of the image side
    y: float


def relation_holds(a: Obj, b: Obj, relation: int) -> bool:
    dx, dy = b.x - a.x, b.y - a.y
    return [dx > MARGIN, -dx > MARGIN, dy > MARGIN, -dy > MARGIN][relation]


def scene_arrays(scenes: list[list[Obj]]) -> tuple[np.ndarray, np.ndarray]:
    """Scenes as arrays.

    Returns:
        attrs: `[N, 3, 3]` int (colour, shape, size) per object slot, -1 for an empty slot.
        rels: `[N, 3, 3]` int, bit r set when object i stands in relation r to object j.
    """
    attrs = np.full((len(scenes), MAX_OBJECTS, 3), -1, dtype=np.int64)
    rels = np.zeros((len(scenes), MAX_OBJECTS, MAX_OBJECTS), dtype=np.int64)
    for n, scene in enumerate(scenes):
        for i, a in enumerate(scene):
            attrs[n, i] = (a.colour, a.shape, a.size)
            for j, b in enumerate(scene):
                if i != j:
                    rels[n, i, j] = sum(1 << r for r in range(4) if relation_holds(a, b, r))
    return attrs, rels


def satisfies(specs: np.ndarray, attrs: np.ndarray, rels: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Which scenes satisfy which caption specs.

    Args:
        specs: `[C, 10]` int: three descriptors of (colour, shape, size), -1 for "not named" and `UNUSED` in the
            colour of an unused slot, then the relation between descriptors 0 and 1 (-1 for none).
        attrs, rels: from `scene_arrays`, `[N, 3, 3]` each.

    Returns:
        `[C, N]` bool.
    """
    out = np.zeros((len(specs), len(attrs)), dtype=bool)
    for start in range(0, len(specs), chunk):
        out[start:start + chunk] = _satisfied(specs[start:start + chunk, None], attrs[None], rels[None])
    return out


def satisfies_pairs(specs: np.ndarray, attrs: np.ndarray, rels: np.ndarray) -> np.ndarray:
    """`satisfies` for given pairs only: does scene p satisfy spec p? `specs` `[P, 10]`, `attrs`, `rels` `[P, 3, 3]`
    -> `[P]` bool. (Checking a few candidates per caption is far cheaper than the full `[C, N]` matrix.)"""
    return _satisfied(specs, attrs, rels)


def _satisfied(spec: np.ndarray, attrs: np.ndarray, rels: np.ndarray) -> np.ndarray:
    """The check itself over broadcastable leading dimensions: `spec` `[..., 10]`, `attrs` / `rels` `[..., 3, 3]`."""
    desc = spec[..., :9].reshape(*spec.shape[:-1], MAX_OBJECTS, 3)  # [..., s, 3]
    used = desc[..., 0] != UNUSED  # [..., s]
    present = attrs[..., 0] >= 0  # [..., o]
    # match[..., s, o]: descriptor s fits object o
    fits = (desc[..., :, None, :] < 0) | (desc[..., :, None, :] == attrs[..., None, :, :])
    match = fits.all(-1) & present[..., None, :]
    match |= ~used[..., :, None]
    relation = spec[..., 9]
    sat = np.zeros(np.broadcast_shapes(relation.shape, attrs.shape[:-2]), dtype=bool)
    for perm in permutations(range(MAX_OBJECTS)):
        ok = match[..., 0, perm[0]] & match[..., 1, perm[1]] & match[..., 2, perm[2]]
        bit = (rels[..., perm[0], perm[1]] >> np.maximum(relation, 0)) & 1
        ok &= (relation < 0) | (bit == 1)
        sat |= ok
    return sat


# --- sampling scenes -------------------------------------------------------------------------------------------

RADIUS = (0.10, 0.17)  # object radius (fraction of the side) for small and big


def _place(rng: np.random.Generator, objs: list[Obj]) -> bool:
    """Sample positions with no overlaps; False if it could not."""
    for _ in range(100):
        for o in objs:
            r = RADIUS[o.size]
            o.x, o.y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        clear = all(np.hypot(a.x - b.x, a.y - b.y) > RADIUS[a.size] + RADIUS[b.size] + 0.03
                    for i, a in enumerate(objs) for b in objs[i + 1:])
        # every pair must be separated along at least one axis so a relation can describe it
        related = all(any(relation_holds(a, b, r) for r in range(4))
                      for i, a in enumerate(objs) for b in objs[i + 1:])
        if clear and related:
            return True
    return False


def sample_scene(rng: np.random.Generator) -> list[Obj]:
    while True:
        n = int(rng.choice([1, 2, 3], p=[0.1, 0.5, 0.4]))
        objs = [Obj(int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES))), int(rng.integers(2)), 0, 0)
                for _ in range(n)]
        if _place(rng, objs):
            return objs


def near_duplicate(rng: np.random.Generator, scene: list[Obj]) -> list[Obj]:
    """A copy of `scene` that differs only in attribute binding or in a spatial relation.

    Two or more objects: swap the colours (or shapes) of two of them, or swap their positions. One object:
    change its colour, shape or size. The captions of the two scenes then differ only in what they bind.
    """
    twin = [Obj(o.colour, o.shape, o.size, o.x, o.y) for o in scene]
    if len(twin) == 1:
        o = twin[0]
        attr = int(rng.integers(3))
        if attr == 0:
            o.colour = (o.colour + int(rng.integers(1, len(COLOURS)))) % len(COLOURS)
        elif attr == 1:
            o.shape = (o.shape + int(rng.integers(1, len(SHAPES)))) % len(SHAPES)
        else:
            o.size = 1 - o.size
        return twin
    i, j = (int(v) for v in rng.choice(len(twin), size=2, replace=False))
    a, b = twin[i], twin[j]
    kind = rng.choice(["colour", "shape", "position"])
    if kind == "colour" and a.colour != b.colour:
        a.colour, b.colour = b.colour, a.colour
    elif kind == "shape" and a.shape != b.shape:
        a.shape, b.shape = b.shape, a.shape
    else:  # positions (the relation flips); sizes travel with the objects, so re-check the layout still fits
        a.x, b.x, a.y, b.y = b.x, a.x, b.y, a.y
        if not _fits(twin):
            a.x, b.x, a.y, b.y = b.x, a.x, b.y, a.y
            a.colour, b.colour = b.colour, a.colour
    return twin


def _fits(objs: list[Obj]) -> bool:
    inside = all(RADIUS[o.size] < o.x < 1 - RADIUS[o.size] and RADIUS[o.size] < o.y < 1 - RADIUS[o.size] for o in objs)
    return inside and all(np.hypot(a.x - b.x, a.y - b.y) > RADIUS[a.size] + RADIUS[b.size] + 0.03
                          for i, a in enumerate(objs) for b in objs[i + 1:])


# --- captions --------------------------------------------------------------------------------------------------

def _phrase(rng: np.random.Generator, o: Obj, named: tuple[bool, bool, bool]) -> str:
    words = []
    if named[2]:
        words.append(str(rng.choice(SIZE_WORDS[SIZES[o.size]])))
    if named[0]:
        words.append(COLOUR_NAMES[o.colour])
    words.append(str(rng.choice(SHAPE_WORDS[SHAPES[o.shape]])) if named[1] else "shape")
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}"


def _descriptor(o: Obj, named: tuple[bool, bool, bool]) -> list[int]:
    return [o.colour if named[0] else -1, o.shape if named[1] else -1, o.size if named[2] else -1]


SINGLE = ["{a}", "a picture of {a}", "{a} on a plain background", "there is {a}", "an image showing {a}"]
RELATED = ["{a} {rel} {b}", "there is {a} {rel} {b}", "an image with {a} {rel} {b}", "{a} is {rel} {b}",
           "{a} placed {rel} {b}"]
LISTED = ["{a} and {b}", "a picture of {a} and {b}", "{a} together with {b}"]


def caption_scene(rng: np.random.Generator, scene: list[Obj], count: int) -> list[tuple[str, list[int]]]:
    """`count` captions of one scene, each with its spec (see `satisfies`).

    Most captions name colour and shape (size half the time) and, with two or more objects, a relation, so
    the binding of attributes to objects and the relation carry the meaning; a few list objects without a
    relation or leave an object out, as real captions do.
    """
    out = []
    for _ in range(count):
        named_size = bool(rng.random() < 0.5)
        named = (True, True, named_size)
        spec = [UNUSED, -1, -1] * MAX_OBJECTS + [-1]
        if len(scene) == 1:
            o = scene[0]
            text = str(rng.choice(SINGLE)).format(a=_phrase(rng, o, named))
            spec[0:3] = _descriptor(o, named)
        else:
            i, j = (int(v) for v in rng.choice(len(scene), size=2, replace=False))
            a, b = scene[i], scene[j]
            style = rng.random()
            if style < 0.75:  # a relation between two objects (the others, if any, unmentioned)
                rel = int(rng.choice([r for r in range(4) if relation_holds(a, b, r)]))
                text = str(rng.choice(RELATED)).format(
                    a=_phrase(rng, a, named), rel=rng.choice(RELATION_WORDS[RELATIONS[rel]]), b=_phrase(rng, b, named))
                spec[0:3], spec[3:6], spec[9] = _descriptor(a, named), _descriptor(b, named), rel
            else:  # every object listed, no relation
                others = [o for k, o in enumerate(scene) if k not in (i, j)]
                phrases = [_phrase(rng, o, named) for o in (a, b, *others)]
                if len(phrases) == 3:
                    text = f"{phrases[0]}, {phrases[1]} and {phrases[2]}"
                else:
                    text = str(rng.choice(LISTED)).format(a=phrases[0], b=phrases[1])
                for k, o in enumerate((a, b, *others)):
                    spec[3 * k:3 * k + 3] = _descriptor(o, named)
        out.append((text, spec))
    return out


def caption_words() -> list[str]:
    """Every word a synthetic caption can contain, sorted: the vocabulary of the tiny first stages' tokenizer.

    Read from the word lists and templates above, so a word added to the grammar joins the vocabulary.
    """
    phrases = [*COLOUR_NAMES, "shape", "a", "an", "and", ","]
    for table in (SHAPE_WORDS, SIZE_WORDS, RELATION_WORDS):
        phrases += [w for words in table.values() for w in words]
    phrases += [t.format(a="", b="", rel="") for t in (*SINGLE, *RELATED, *LISTED)]
    return sorted({w for p in phrases for w in p.split()})
