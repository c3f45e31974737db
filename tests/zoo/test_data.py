import pytest
import torch

from osmos.zoo import data as D


def _batch(seed, size=32, n=16):
    return D.ShapesDataset(size=size, seed=seed).batch(n)


def test_dataset_is_deterministic_per_seed():
    x1, c1, y1 = _batch(3)
    x2, c2, y2 = _batch(3)
    x3, c3, _ = _batch(4)
    assert torch.equal(x1, x2) and c1 == c2
    assert all(torch.equal(y1[k], y2[k]) for k in y1)
    assert not torch.equal(x1, x3) and c1 != c3


@pytest.mark.parametrize("size", [16, 32])
def test_render_shape_range_and_colours(size):
    g = torch.Generator().manual_seed(0)
    attrs = D.sample_attributes(12, g, style=0, background=0)  # solid on black
    x = D.render(attrs, size)
    assert x.shape == (12, 3, size, size) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    # the brightest pixel of a solid shape on black is the shape's own colour
    flat = x.flatten(2)
    brightest = flat.gather(2, flat.sum(1, keepdim=True).argmax(2, keepdim=True).expand(-1, 3, 1)).squeeze(2)
    ref = torch.tensor([D.RGB[D.COLOURS[int(c)]] for c in attrs.colour])
    assert torch.allclose(brightest, ref, atol=0.02)


def test_shapes_differ_and_are_antialiased():
    g = torch.Generator().manual_seed(0)
    base = D.sample_attributes(1, g, colour=0, style=0, background=0)
    imgs = []
    for s in range(len(D.SHAPES)):
        a = D.Attributes(**{**base.__dict__, "shape": torch.tensor([s]), "angle": torch.zeros(1)})
        imgs.append(D.render(a, 32)[0])
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert (imgs[i] - imgs[j]).abs().sum() > 5, (D.SHAPES[i], D.SHAPES[j])
    red = imgs[0][0]
    assert ((red > 0.1) & (red < 0.85)).any()  # partial coverage at the border


def test_caption_splits_are_disjoint_and_name_the_concepts():
    for concept, values in D.WORDS.items():
        for value, (train, heldout) in values.items():
            assert train and heldout and not set(train) & set(heldout), (concept, value)
    assert not set(D.TEMPLATES["train"]) & set(D.TEMPLATES["heldout"])
    g = torch.Generator().manual_seed(1)
    attrs = D.sample_attributes(64, g)
    for split, k in (("train", 0), ("heldout", 1)):
        caps = D.caption(attrs, split, g)
        for i, cap in enumerate(caps):
            colour_words = D.WORDS["colour"][D.COLOURS[int(attrs.colour[i])]][k]
            assert any(w in cap for w in colour_words), cap
    with pytest.raises(ValueError, match="split"):
        D.caption(attrs, "test", g)


def test_prompt_for_uses_the_requested_split():
    assert D.prompt_for("circle", "red") == "a red circle"
    held = D.prompt_for("circle", "red", "heldout")
    assert "crimson" in held and "orb" in held


def test_video_moves_and_keeps_the_object():
    g = torch.Generator().manual_seed(0)
    attrs = D.sample_attributes(3, g, style=0, background=0)
    v = D.render_video(attrs, frames=8, size=16, generator=g)
    assert v.shape == (3, 8, 3, 16, 16)
    assert (v[:, 0] - v[:, -1]).abs().sum((1, 2, 3)).min() > 1  # it moved
    mass = v.sum((2, 3, 4))
    assert (mass.max(1).values / mass.min(1).values).max() < 1.5  # the same object in every frame
    with pytest.raises(ValueError, match="frames"):
        D.render_video(attrs, frames=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        D.ShapesDataset(size=24)
    with pytest.raises(ValueError, match="shape"):
        D.sample_attributes(2, torch.Generator(), shape=9)
