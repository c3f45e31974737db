import numpy as np
import pytest
import torch
from helpers import save_png, smooth_images

from osmos.replication import EmbeddingIndex, PixelDescriptor, build_index


def test_build_save_load_memmapped(tmp_path):
    d = PixelDescriptor()
    imgs = smooth_images(10, 32)
    index = build_index(imgs, d, batch_size=4, progress=False)
    assert len(index) == 10 and index.names[3] == "image[3]" and index.descriptor == "pixels"
    torch.testing.assert_close(index.features, d(imgs))
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert isinstance(loaded.features, np.memmap) and not loaded.features.flags.writeable
    np.testing.assert_array_equal(np.asarray(loaded.features), index.features.numpy())
    assert loaded.names == index.names
    index.save(tmp_path / "half", dtype="float16")
    half = EmbeddingIndex.load(tmp_path / "half", mmap=False)
    assert half.features.dtype == np.float16
    np.testing.assert_allclose(half.features.astype(np.float32), index.features.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="dtype"):
        index.save(tmp_path / "x", dtype="int8")


def test_build_from_folder_skips_unreadable(tmp_path):
    imgs = smooth_images(3, 32)
    for i in range(3):
        save_png(imgs[i], tmp_path / f"{i}.png", size=(20 + 10 * i, 30))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.png"):
        index = build_index(tmp_path, PixelDescriptor(), batch_size=2, image_size=32, progress=False)
    assert [n.rsplit("/", 1)[1] for n in index.names] == ["0.png", "1.png", "2.png"]
    assert len(index.skipped) == 1 and index.skipped[0][0].endswith("broken.png")
    assert index.features.shape == (3, 1008)
