import pytest
import torch
from helpers import smooth_images

from osmos.replication import ModuleDescriptor, PixelDescriptor
from osmos.replication.descriptors import descriptor_from_spec


def test_pixel_descriptor_shape_norm_and_copies():
    d = PixelDescriptor()
    imgs = smooth_images(6, 64)
    f = d(imgs)
    assert f.shape == (6, d.dim) == (6, 1008) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=1), torch.ones(6))
    # A resized, slightly brightened copy stays near 1; different images are far lower.
    copy = torch.nn.functional.interpolate(imgs, size=(40, 40), mode="bilinear", antialias=True) * 0.9 + 0.05
    sims = d(copy) @ f.T
    assert sims.diagonal().min() > 0.95
    off = sims - torch.diag(sims.diagonal())
    assert off.max() < sims.diagonal().min() - 0.2


def test_pixel_descriptor_rejects_bad_input():
    with pytest.raises(ValueError, match="images"):
        PixelDescriptor()(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="scales"):
        PixelDescriptor(scales=(0,))


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def _expected(net, imgs, size):
    x = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.nn.functional.normalize(net(x), dim=1)


def test_module_descriptor_from_torchscript(tmp_path):
    net = TinyNet().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    d = descriptor_from_spec(str(path), input_size=32)
    imgs = smooth_images(3, 40)
    assert d.dim == 5 and d.name == "tiny"
    torch.testing.assert_close(d(imgs), _expected(net, imgs, 32), rtol=1e-5, atol=1e-6)


def test_module_descriptor_from_exported_program(tmp_path):
    net = TinyNet().eval()
    path = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    d = ModuleDescriptor.from_file(path, input_size=16)
    imgs = smooth_images(2, 20)
    torch.testing.assert_close(d(imgs), _expected(net, imgs, 16), rtol=1e-5, atol=1e-6)


def test_module_descriptor_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    net = TinyNet().eval()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    d = ModuleDescriptor.from_safetensors(tmp_path / "w.safetensors", TinyNet, input_size=24)
    imgs = smooth_images(2, 30)
    torch.testing.assert_close(d(imgs), _expected(net, imgs, 24), rtol=1e-5, atol=1e-6)
    save_file({"conv.weight": net.conv.weight}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        ModuleDescriptor.from_safetensors(tmp_path / "partial.safetensors", TinyNet)


def test_descriptor_spec_errors():
    assert isinstance(descriptor_from_spec("pixels"), PixelDescriptor)
    with pytest.raises(ValueError, match="no such file"):
        descriptor_from_spec("/nonexistent/model.pt")
