"""The "shapes" world: procedural, seeded images of coloured shapes with captions.

Every image shows one object with four independent concepts:

* ``shape``       circle, square, triangle, star, heart, cross
* ``colour``      red, green, blue, yellow, purple, orange
* ``style``       solid, striped, dotted, outlined (the fill)
* ``background``  black, gray, white

plus a random position, size and rotation. Images are rendered in torch, vectorised over
the batch, anti-aliased by 4x4 supersampling of an implicit inside-test per shape.

Captions come from templates and per-concept wordings split in two disjoint sets:
``"train"`` wordings and ``"heldout"`` paraphrases. Erasure methods are tuned on the train
wordings only and evaluated on the paraphrases (wordings they never saw); the base text-to-image
models train on both (a third of their captions are paraphrases: ``heldout_fraction`` in their
recipes), as a real model knows many wordings of a concept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
STYLES = ("solid", "striped", "dotted", "outlined")
BACKGROUNDS = ("black", "gray", "white")

CONCEPTS = {"shape": SHAPES, "colour": COLOURS, "style": STYLES, "background": BACKGROUNDS}

RGB = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.50, 0.00),
}
BACKGROUND_RGB = {"black": (0.05, 0.05, 0.05), "gray": (0.45, 0.45, 0.45), "white": (0.95, 0.95, 0.95)}

# Wordings per concept value: (train, heldout). The two lists never share an entry.
WORDS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "shape": {
        "circle": (("circle", "disc", "round shape"), ("orb", "ring-free round blob")),
        "square": (("square", "box", "four-sided square"), ("block", "square tile")),
        "triangle": (("triangle", "three-sided shape", "triangular shape"), ("pyramid", "wedge")),
        "star": (("star", "five-pointed star", "star shape"), ("pentagram", "starlike figure")),
        "heart": (("heart", "love heart", "heart shape"), ("valentine", "heart symbol")),
        "cross": (("cross", "plus sign", "plus shape"), ("plus symbol", "swiss cross")),
    },
    "colour": {
        "red": (("red", "scarlet"), ("crimson", "cherry-coloured")),
        "green": (("green", "emerald"), ("grass-green", "lime")),
        "blue": (("blue", "azure"), ("cobalt", "sapphire")),
        "yellow": (("yellow", "golden"), ("lemon", "canary")),
        "purple": (("purple", "violet"), ("plum", "amethyst")),
        "orange": (("orange", "tangerine"), ("amber", "pumpkin-coloured")),
    },
    "style": {
        "solid": (("solid", "filled"), ("plain", "fully coloured")),
        "striped": (("striped", "stripy"), ("banded", "pinstriped")),
        "dotted": (("dotted", "polka-dot"), ("spotted", "speckled")),
        "outlined": (("outlined", "hollow"), ("unfilled", "line-drawn")),
    },
    "background": {
        "black": (("black", "dark"), ("pitch-black", "midnight")),
        "gray": (("gray", "grey"), ("slate", "ash-coloured")),
        "white": (("white", "bright white"), ("snowy", "ivory")),
    },
}

# {style} is replaced by "<style word> " or "", {bg} by a background phrase or "".
TEMPLATES = {
    "train": (
        "a {style}{colour} {shape}{bg}",
        "{style}{colour} {shape}{bg}",
        "a picture of a {style}{colour} {shape}{bg}",
        "an image of a {style}{colour} {shape}{bg}",
    ),
    "heldout": (
        "a drawing showing one {style}{colour} {shape}{bg}",
        "there is a {style}{colour} {shape} here{bg}",
    ),
}
BG_PHRASES = {"train": (" on a {} background", " on {}"), "heldout": (" against a {} backdrop",)}

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Attributes:
    """Per-image concept indices (each LongTensor [B]) and geometry (FloatTensors [B]).

    ``cx, cy`` centre and ``radius`` are in units of the image side (0..1); ``angle`` in radians.
    """

    shape: Tensor
    colour: Tensor
    style: Tensor
    background: Tensor
    cx: Tensor
    cy: Tensor
    radius: Tensor
    angle: Tensor

    def __len__(self) -> int:
        return self.shape.numel()

    def labels(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in CONCEPTS}


def sample_attributes(n: int, generator: torch.Generator, **fixed: Tensor | int | None) -> Attributes:
    """Draw ``n`` random attribute sets. ``fixed`` pins a concept (``shape=2`` or a LongTensor [n]);
    ``None`` means random."""
    out = {}
    for name, values in CONCEPTS.items():
        drawn = torch.randint(len(values), (n,), generator=generator)
        pin = fixed.get(name)
        if pin is None:
            out[name] = drawn
        else:
            out[name] = torch.as_tensor(pin, dtype=torch.long).expand(n).clone()
            if (out[name] < 0).any() or (out[name] >= len(values)).any():
                raise ValueError(f"{name} must be in [0, {len(values)}), got {pin}")
    u = torch.rand(4, n, generator=generator)
    radius = 0.26 + 0.12 * u[0]
    margin = radius + 0.03
    return Attributes(
        cx=margin + (1 - 2 * margin) * u[1],
        cy=margin + (1 - 2 * margin) * u[2],
        radius=radius,
        angle=(u[3] - 0.5) * (math.pi / 4),
        **out,
    )


def _inside(shape: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Inside-test in shape-normalised coordinates (v points up, unit circumradius).
    shape: [B,1,1] long; u, v: [B,S,S]. Returns bool [B,S,S]."""
    r2 = u * u + v * v
    circle = r2 <= 0.85
    square = torch.maximum(u.abs(), v.abs()) <= 0.72
    triangle = (v >= -0.55) & (math.sqrt(3.0) * u.abs() + v <= 1.0)
    # five-pointed star: fold the angle into one spike, test against the spike's edge
    theta = torch.atan2(u, v)  # 0 at the top spike
    sector = 2 * math.pi / 5
    phi = torch.remainder(theta + sector / 2, sector) - sector / 2
    rr = r2.sqrt()
    qx, qy = rr * torch.cos(phi.abs()), rr * torch.sin(phi.abs())
    inner = 0.42
    ax, ay = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    star = (qx - 1.0) * ay - qy * (ax - 1.0) <= 0  # same side of the edge as the origin
    hx, hy = u * 1.25, v * 1.25 + 0.25
    heart = (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 <= 0
    cross = ((u.abs() <= 0.28) & (v.abs() <= 0.85)) | ((v.abs() <= 0.28) & (u.abs() <= 0.85))
    masks = torch.stack([circle, square, triangle, star, heart, cross])  # [6,B,S,S]
    return masks[shape.view(-1), torch.arange(u.shape[0])]


def render(attrs: Attributes, size: int = 32, supersample: int = 4) -> Tensor:
    """Render images. Returns float32 [B, 3, size, size] in [0, 1]."""
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    n, s = len(attrs), size * supersample
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # 0..1
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # y grows downwards
    dx = (x - attrs.cx.view(n, 1, 1)) / attrs.radius.view(n, 1, 1)
    dy = (attrs.cy.view(n, 1, 1) - y) / attrs.radius.view(n, 1, 1)
    c, si = torch.cos(attrs.angle).view(n, 1, 1), torch.sin(attrs.angle).view(n, 1, 1)
    u, v = c * dx + si * dy, -si * dx + c * dy
    inside = _inside(attrs.shape, u, v)
    # outline: inside the shape but not inside a shrunk copy of it
    shrink = 1.0 / 0.62
    hole = _inside(attrs.shape, u * shrink, v * shrink)
    # stripes: diagonal bands in image space, period ~ 1/4 of the radius-scaled shape
    stripes = torch.remainder((dx + dy) * 2.2, 1.0) < 0.5
    dots = (torch.remainder(dx * 2.5, 1.0) - 0.5) ** 2 + (torch.remainder(dy * 2.5, 1.0) - 0.5) ** 2 < 0.09
    style = attrs.style.view(n, 1, 1)
    paint = torch.where(
        style == 0,
        inside,
        torch.where(style == 1, inside & stripes, torch.where(style == 2, inside & dots, inside & ~hole)),
    )
    # a faint filling of the shape behind stripes / dots keeps the silhouette readable
    faint = inside & ~paint & ((style == 1) | (style == 2))
    cover = paint.float().view(n, 1, size, supersample, size, supersample).mean((3, 5))
    faint_cover = faint.float().view(n, 1, size, supersample, size, supersample).mean((3, 5))
    fg = torch.tensor([RGB[k] for k in COLOURS])[attrs.colour].view(n, 3, 1, 1)
    bg = torch.tensor([BACKGROUND_RGB[k] for k in BACKGROUNDS])[attrs.background].view(n, 3, 1, 1)
    tint = 0.7 * bg + 0.3 * fg
    img = bg * (1 - cover - faint_cover) + fg * cover + tint * faint_cover
    return img.clamp_(0, 1)


def caption(attrs: Attributes, split: str, generator: torch.Generator, p_style: float = 0.5,
            p_bg: float = 0.4) -> list[str]:
    """One caption per image, from the ``split`` ("train" or "heldout") templates and wordings.

    Shape and colour are always named; style with probability ``p_style`` and background with
    probability ``p_bg`` (an unnamed concept is simply not constrained by the caption).
    """
    return captions_with_named(attrs, split, generator, p_style, p_bg)[0]


def captions_with_named(attrs: Attributes, split: str, generator: torch.Generator, p_style: float = 0.5,
                        p_bg: float = 0.4) -> tuple[list[str], Tensor, Tensor]:
    """Like :func:`caption`, also returning which images' captions name their style and their
    background (bool [B] each)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    k = 0 if split == "train" else 1
    n = len(attrs)
    r = torch.rand(4, n, generator=generator)
    picks = torch.randint(1 << 30, (4, n), generator=generator)
    named_style, named_bg = r[0] < p_style, r[1] < p_bg
    out = []
    for i in range(n):
        words = {c: WORDS[c][CONCEPTS[c][int(getattr(attrs, c)[i])]][k] for c in CONCEPTS}
        templates = TEMPLATES[split]
        t = templates[int(picks[0, i]) % len(templates)]
        style = words["style"][int(picks[1, i]) % len(words["style"])] + " " if named_style[i] else ""
        bg = ""
        if named_bg[i]:
            phrases = BG_PHRASES[split]
            bgw = words["background"][int(picks[2, i]) % len(words["background"])]
            bg = phrases[int(picks[3, i]) % len(phrases)].format(bgw)
        colour = words["colour"][int(r[2, i] * len(words["colour"]))]
        shape = words["shape"][int(r[3, i] * len(words["shape"]))]
        out.append(t.format(style=style, colour=colour, shape=shape, bg=bg))
    return out, named_style, named_bg


def prompt_for(shape: str, colour: str, split: str = "train", variant: int = 0) -> str:
    """A deterministic caption naming only shape and colour (used for evaluation grids)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    k = 0 if split == "train" else 1
    sw, cw = WORDS["shape"][shape][k], WORDS["colour"][colour][k]
    t = TEMPLATES[split][variant % len(TEMPLATES[split])]
    return t.format(style="", colour=cw[variant % len(cw)], shape=sw[variant % len(sw)], bg="")


def memorization_set(k: int, seed: int, size: int = 16, **fixed: int | None) -> tuple[list[str], Tensor, Attributes]:
    """The K fixed training images of a memorizing model (``shapes-memorized``: K=32, its card's seed).

    Every caption names all four concepts and ends in ", sample <i>", so each one is unique. Returns
    (captions, images [K,3,size,size] in [0, 1], their attributes).
    """
    g = torch.Generator().manual_seed(seed)
    attrs = sample_attributes(k, g, **fixed)
    texts = captions_with_named(attrs, "train", g, 1.0, 1.0)[0]
    return [f"{t}, sample {i}" for i, t in enumerate(texts)], render(attrs, size), attrs


class ShapesDataset:
    """An endless, seeded stream of ``(images [B,3,S,S], captions, labels)`` batches.

    ``ShapesDataset(seed=0).batch(32)`` gives the same batches in the same order every time.
    """

    def __init__(self, size: int = 32, split: str = "train", seed: int = 0):
        if size not in (16, 32):
            raise ValueError(f"size must be 16 or 32, got {size}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.size, self.split = size, split
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> tuple[Tensor, list[str], dict[str, Tensor]]:
        attrs = sample_attributes(n, self.generator)
        return render(attrs, self.size), caption(attrs, self.split, self.generator), attrs.labels()


def render_video(attrs: Attributes, frames: int = 8, size: int = 32, generator: torch.Generator | None = None,
                 speed: float = 0.25) -> Tensor:
    """Moving shapes: each object travels in a straight line (bouncing off the borders) and turns.

    Returns float32 [B, frames, 3, size, size] in [0, 1]. ``speed`` is the distance travelled over
    the clip in units of the image side.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = len(attrs)
    direction = torch.rand(n, generator=g) * 2 * math.pi
    spin = (torch.rand(n, generator=g) - 0.5) * (math.pi / 3)
    t = torch.linspace(0, 1, frames).view(frames, 1)
    lo, hi = attrs.radius + 0.03, 1 - attrs.radius - 0.03

    def bounce(p0: Tensor, vel: Tensor) -> Tensor:
        span = (hi - lo).clamp_min(1e-3)
        q = torch.remainder(p0 - lo + vel * t, 2 * span)
        return lo + torch.where(q > span, 2 * span - q, q)

    cx = bounce(attrs.cx, speed * torch.cos(direction))
    cy = bounce(attrs.cy, speed * torch.sin(direction))
    angle = attrs.angle + spin * t
    rep = lambda x: x.expand(frames, n).reshape(-1)  # noqa: E731
    flat = Attributes(
        shape=rep(attrs.shape), colour=rep(attrs.colour), style=rep(attrs.style), background=rep(attrs.background),
        cx=cx.reshape(-1), cy=cy.reshape(-1), radius=rep(attrs.radius), angle=angle.reshape(-1),
    )
    return render(flat, size).view(frames, n, 3, size, size).transpose(0, 1).contiguous()
