"""The learned SSCD-style copy descriptor: augmentations, loss, shipped weights, use in scan."""

import pytest
import torch

from osmos.replication import PixelDescriptor, scan
from osmos.replication.copy_descriptor import (WEIGHTS, CopyDetectionNet, ShapesCopyDescriptor, augment,
                                               contrastive_loss, save, sibling_renders, train)
from osmos.replication.descriptors import descriptor_from_spec
from osmos.zoo import data as D


def renders(n, seed):
    return D.render(D.sample_attributes(n, torch.Generator().manual_seed(seed)), 16)


def test_augment_shapes_range_and_determinism():
    images = renders(6, 0)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    up = torch.nn.functional.interpolate(images, size=32, mode="bilinear", align_corners=False)
    assert (a - up).abs().mean() > 0.02  # edited
    faded = augment(images, torch.Generator().manual_seed(1), fade=0.9)
    assert faded.min() >= 0 and faded.max() <= 1 and not torch.equal(faded, a)
    assert faded.std() < a.std()  # washed out towards grey
    mild = augment(images, torch.Generator().manual_seed(1), strength=0.0)
    flipped = up.flip(-1)
    # strength 0: no crop, jitter or noise; only a flip and a light blur remain
    assert min((mild - up).abs().mean(), (mild - flipped).abs().mean()) < 0.05


def test_contrastive_loss_prefers_matching_views_and_has_gradients():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g, requires_grad=True)
    aligned = contrastive_loss(z, z + 0.01 * torch.randn(16, 8, generator=g))
    shuffled = contrastive_loss(z, z[torch.randperm(16, generator=g)])
    assert aligned < shuffled
    aligned.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_shipped_weights_are_small_and_load():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 1 << 20
    desc = ShapesCopyDescriptor()
    f = desc(renders(3, 1))
    assert f.shape == (3, desc.dim) and torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    assert isinstance(descriptor_from_spec("shapes-sscd"), ShapesCopyDescriptor)


def test_learned_descriptor_beats_pixels_at_finding_the_source_of_copies():
    db = renders(200, 2)
    g = torch.Generator().manual_seed(3)
    src = torch.randperm(200, generator=g)[:60]
    copies = augment(db[src], g, strength=0.5)
    hits = {}
    for desc in (PixelDescriptor(), ShapesCopyDescriptor()):
        report = scan(copies, db, desc, progress=False)  # the learned descriptor through the common interface
        hits[desc.name] = sum(int(m == int(s)) for m, s in zip(report.match_indices, src))
    assert hits["shapes-sscd"] > hits["pixels"] + 6, hits


def test_sibling_renders_share_concepts_not_geometry():
    pairs = sibling_renders(5, torch.Generator().manual_seed(6))
    assert pairs.shape == (10, 3, 16, 16)
    assert ((pairs[:5] - pairs[5:]).abs().flatten(1).max(dim=1).values > 0.1).all()  # never the same image
    corner = pairs[:, :, 0, 0]  # the background colour (shapes rarely reach the corner)
    assert (corner[:5] - corner[5:]).abs().max() < 0.15


@pytest.mark.parametrize("siblings", [True, False])
def test_train_save_and_reload_round_trip(tmp_path, siblings):
    net, log = train(minutes=1.0, max_steps=2, batch=16, pool=64, log_every=0, siblings=siblings, width=8, dim=16)
    assert log["steps"] == 2 and log["architecture"] == {"width": 8, "dim": 16, "strides": [2, 2, 2, 1]}
    assert log["sibling_negatives"] == siblings
    assert isinstance(net, CopyDetectionNet) and not net.training
    path = tmp_path / "tiny.safetensors"
    save(net, log, path)
    images = renders(4, 5)
    ours = ShapesCopyDescriptor(net=net)(images)
    loaded = ShapesCopyDescriptor(path)(images)
    assert torch.allclose(ours, loaded, atol=5e-3)  # weights stored as float16
    with pytest.raises(FileNotFoundError):
        ShapesCopyDescriptor(tmp_path / "missing.safetensors")
