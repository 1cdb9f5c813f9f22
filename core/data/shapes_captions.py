"""Captions for the synthetic "shapes" benchmark: web-like alt-text (clean or noisy) and synthetic captions.

The alt-text imitates scraped pairs (terse, inconsistently cased, sometimes useless or wrong) so
that filtering and recaptioning ablations have something real to fix; the synthetic captions are what a good
captioner would write and are always correct about every object. Colour words for backgrounds are never used,
so a colour word in any caption always refers to an object.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ablate.core.data.shapes_render import COLOURS, SHAPES, DrawnObject

_UNINFORMATIVE: tuple[str, ...] = (
    "IMG_{n4}.JPG",
    "DSC{n5}.jpg",
    "click here for more",
    "stock photo",
    "untitled design {n2}",
    "best prices online",
    "image",
    "photo {n3}",
    "view larger image",
    "thumbnail",
    "Screenshot 2019-{n2}-{n2} at {n2}.{n2}.{n2}",
    "free shipping on all orders",
    "product image {n2}",
    "banner-{n3}.png",
    "no description available",
    "loading...",
)

_ALT_ONE: tuple[str, ...] = (
    "{a}",
    "{A} clipart",
    "{A} icon",
    "{a} png",
    "{A} vector illustration",
    "{colour} {shape} shape",
    "{shape} in {colour}",
    "{A} sticker",
    "{A} - free download",
    "{a} | stock vector",
    "simple {a} logo",
)
_ALT_MANY: tuple[str, ...] = (
    "{a} and {rest}",
    "{A} with {rest}",
    "{A}, {rest}",
    "{a} & {rest} clipart",
    "{A} and {rest} icons",
)

# Each synthetic template describes every object; {objs} lists them largest first, {bg} names the texture.
_SYN: tuple[str, ...] = (
    "a photo of {main} next to {rest} on a {bg} background.",
    "an image showing {objs} on a {bg} background.",
    "{objs_cap} against a {bg} backdrop.",
    "a {bg} background with {objs}.",
    "a simple illustration of {objs}, {where}.",
    "there is {main} {where}, together with {rest}.",
    "a picture containing {objs}.",
    "a digital graphic of {objs} over a {bg} pattern.",
    "{main_cap} is the biggest object here; there is also {rest}.",
    "close-up of {objs} on a {bg} surface.",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _where(obj: DrawnObject) -> str:
    """Coarse position words: they make retrieval captions more specific without naming colours or shapes."""
    col = "left" if obj.x < 0.4 else "right" if obj.x > 0.6 else ""
    row = "top" if obj.y < 0.4 else "bottom" if obj.y > 0.6 else ""
    if not (row or col):
        return "in the centre"
    if row and col:
        return f"in the {row} {col}"
    return f"on the {row or col}"


def _case(text: str, rng: np.random.Generator) -> str:
    """Web alt-text casing is inconsistent: lower, Sentence or Title case."""
    style = rng.random()
    if style < 0.5:
        return text.lower() if text[:1].isalpha() else text
    if style < 0.8:
        return text[:1].upper() + text[1:]
    return text.title()


def _alt_phrase(obj: DrawnObject, rng: np.random.Generator) -> str:
    sized = rng.random() < 0.5 or obj.size == "small"
    return f"{obj.size} {obj.colour} {obj.shape}" if sized else f"{obj.colour} {obj.shape}"


def clean_alt(objects: Sequence[DrawnObject], rng: np.random.Generator) -> str:
    """Terse description, largest object first; secondaries may be dropped, as real alt-text is incomplete."""
    main = objects[0]
    rest = [o for o in objects[1:] if rng.random() < 0.7]
    if rest:
        template = _ALT_MANY[int(rng.integers(len(_ALT_MANY)))]
        phrase = _alt_phrase(main, rng)
        text = template.format(a=phrase, A=phrase.capitalize(), rest=_join([_alt_phrase(o, rng) for o in rest]))
    else:
        template = _ALT_ONE[int(rng.integers(len(_ALT_ONE)))]
        phrase = _alt_phrase(main, rng)
        text = template.format(a=phrase, A=phrase.capitalize(), colour=main.colour, shape=main.shape)
    return _case(text, rng)


def uninformative_alt(rng: np.random.Generator) -> str:
    """Boilerplate that carries no information about the image (file names, shop slogans)."""
    template = _UNINFORMATIVE[int(rng.integers(len(_UNINFORMATIVE)))]
    # Every {nK} field gets its own K random digits, so repeated fields (dates, times) differ.
    return re.sub(r"\{n(\d)\}", lambda m: "".join(map(str, rng.integers(0, 10, size=int(m[1])))), template)


def wrong_alt(objects: Sequence[DrawnObject], rng: np.random.Generator) -> str:
    """A confident description of one object that is not in the image as the largest object.

    The wrong shape, the wrong colour, or both: the text never contains the largest object's true shape
    together with its true colour, which is what makes it a harmful pair rather than an incomplete one.
    """
    main = objects[0]
    mode = int(rng.integers(3))
    shape, colour = main.shape, main.colour
    if mode in (0, 2):
        shape = str(rng.choice([s for s in SHAPES if s != main.shape]))
    if mode in (1, 2):
        colour = str(rng.choice([c for c in COLOURS if c != main.colour]))
    fake = DrawnObject(shape, colour, main.size, main.x, main.y, main.area)
    return clean_alt([fake], rng)


def synthetic_captions(
    objects: Sequence[DrawnObject], background: str, rng: np.random.Generator, count: int = 5
) -> list[str]:
    """`count` distinct, correct captions in captioner style, each naming every object's size/colour/shape."""
    phrases = [_article(f"{o.size} {o.colour} {o.shape}") for o in objects]
    rest = _join(phrases[1:])
    fields = {
        "main": phrases[0],
        "main_cap": phrases[0].capitalize(),
        "rest": rest,
        "objs": _join(phrases),
        "objs_cap": _join(phrases).capitalize(),
        "bg": background,
        "where": _where(objects[0]),
    }
    usable = [t for t in _SYN if len(objects) > 1 or "{rest}" not in t]
    picks = rng.choice(len(usable), size=count, replace=False)
    return [usable[int(i)].format(**fields) for i in picks]
