import torch

from osmos.zoo import data as D
from osmos.zoo.evaluate import background_colour, centroid_track, motion_stats, nearest_similarity


def test_background_colour_of_renders_is_the_named_background():
    g = torch.Generator().manual_seed(0)
    for bi, name in enumerate(D.BACKGROUNDS):
        attrs = D.sample_attributes(6, g, background=bi, style=0)
        bg = background_colour(D.render(attrs, 16))
        assert torch.allclose(bg, torch.tensor(D.BACKGROUND_RGB[name]).expand(6, 3), atol=0.02), (name, bg)


def test_nearest_similarity_finds_each_reference_and_ignores_brightness():
    ref = D.render(D.sample_attributes(8, torch.Generator().manual_seed(1)), 16)
    sim, idx = nearest_similarity(ref[[3, 0, 5]] * 0.5 + 0.2, ref)
    assert torch.equal(idx, torch.tensor([3, 0, 5])) and torch.allclose(sim, torch.ones(3), atol=1e-5)
    other = D.render(D.sample_attributes(8, torch.Generator().manual_seed(2)), 16)
    assert nearest_similarity(other, ref)[0].max() < 0.99


def test_centroid_track_follows_a_moving_shape_and_not_a_still_one():
    attrs = D.sample_attributes(16, torch.Generator().manual_seed(3))
    clips = D.render_video(attrs, 8, 16, generator=torch.Generator().manual_seed(4), speed=0.25)
    track = centroid_track(clips)
    assert track.shape == (16, 8, 2)
    # the centroid starts near the object's centre (in pixels)
    start = torch.stack([attrs.cx, attrs.cy], 1) * 16 - 0.5
    assert (track[:, 0] - start).norm(dim=1).median() < 1.5
    moving = motion_stats(clips)
    still = motion_stats(clips[:, :1].expand(-1, 8, -1, -1, -1))
    assert moving["path_length_px"] > 2.0 and moving["moving_fraction"] > 0.5
    assert still["path_length_px"] == 0 and still["moving_fraction"] == 0
    assert moving["background_flicker"] == 0
    flickering = clips.clone()
    flickering[:, 1::2] = (flickering[:, 1::2] + 0.3).clamp(0, 1)  # every other frame brighter
    assert motion_stats(flickering)["background_flicker"] > 0.1


def test_memorization_set_is_fixed_and_its_captions_unique():
    c1, x1, a1 = D.memorization_set(32, 0)
    c2, x2, _ = D.memorization_set(32, 0)
    c3, _, _ = D.memorization_set(32, 1)
    assert c1 == c2 and torch.equal(x1, x2) and c1 != c3
    assert len(set(c1)) == 32 and all(c.endswith(f", sample {i}") for i, c in enumerate(c1))
    assert x1.shape == (32, 3, 16, 16) and len(a1) == 32
