"""Image descriptors for copy detection: images [B, 3, H, W] float in [0, 1] -> [B, D]
L2-normalised float32 features, so an inner product is a cosine similarity.

- `PixelDescriptor`: a training-free baseline (multi-scale downsampled, mean-centred pixels).
  It finds exact and near-exact copies (resized, re-encoded, slightly shifted or brightened);
  it is NOT invariant to crops, flips or strong colour changes the way a learned copy-detection
  descriptor (SSCD) is, and its similarity scale differs from SSCD's (thresholds do not transfer).
- `ModuleDescriptor`: wraps any torch module (SSCD, CLIP / DINO image towers) loaded from a
  local file: a TorchScript or torch.export program (`from_file`) or safetensors weights + a
  constructor (`from_safetensors`). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


class Descriptor:
    """Callable images [B, 3, H, W] (float, [0, 1]) -> L2-normalised features [B, dim]."""

    dim: int
    name: str = "descriptor"

    def features(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        with torch.no_grad():
            out = self.features(images.float()).float()
        return F.normalize(out.reshape(out.shape[0], -1), dim=1)


class PixelDescriptor(Descriptor):
    """Baseline: the image area-downsampled to each of `scales` (s x s), each scale centred on
    its own mean per channel and L2-normalised, concatenated with equal weight.

    dim = 3 * sum(s * s for s in scales) (1008 for the default (4, 8, 16)).
    """

    name = "pixels"

    def __init__(self, scales: Sequence[int] = (4, 8, 16)):
        if not scales or any(not isinstance(s, int) or s < 1 for s in scales):
            raise ValueError(f"scales must be positive ints, got {scales!r}")
        self.scales = tuple(scales)
        self.dim = 3 * sum(s * s for s in self.scales)

    def features(self, images: Tensor) -> Tensor:
        parts = []
        for s in self.scales:
            small = F.adaptive_avg_pool2d(images, s)
            small = small - small.mean(dim=(2, 3), keepdim=True)
            parts.append(F.normalize(small.flatten(1), dim=1))
        return torch.cat(parts, dim=1)


class ModuleDescriptor(Descriptor):
    """Adapter for a user-supplied feature extractor (a torch module).

    Images are resized to `input_size` (square, bilinear), normalised with `mean` / `std`
    (ImageNet statistics by default, as SSCD, DINO and CLIP-style towers expect), and passed
    through the module; its output [B, ...] is flattened and L2-normalised.
    """

    def __init__(self, module: torch.nn.Module, dim: int | None = None, input_size: int = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 name: str = "module"):
        try:
            module.eval()
        except NotImplementedError:  # torch.export programs keep the mode they were exported in
            pass
        self.module = module
        self.input_size = input_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.name = name
        self.dim = dim if dim is not None else self(torch.zeros(1, 3, input_size, input_size)).shape[1]

    def _device(self) -> torch.device:
        p = next(iter(self.module.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def features(self, images: Tensor) -> Tensor:
        device = self._device()
        x = F.interpolate(images.to(device), size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
        x = (x - self.mean.to(device)) / self.std.to(device)
        return self.module(x).cpu()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> ModuleDescriptor:
        """A saved program on the CPU: torch.export (.pt2, via torch.export.load; export it
        with a dynamic batch dimension and input_size x input_size images) or TorchScript
        (any other suffix, e.g. the released SSCD torchscript models)."""
        path = Path(path)
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu")
        return cls(module, name=kwargs.pop("name", path.stem), **kwargs)

    @classmethod
    def from_safetensors(cls, path: str | Path, constructor: Callable[[], torch.nn.Module], **kwargs) -> ModuleDescriptor:
        """Weights from a safetensors file loaded (strictly) into `constructor()`."""
        from safetensors.torch import load_file

        module = constructor()
        module.load_state_dict(load_file(str(path)), strict=True)
        return cls(module, name=kwargs.pop("name", Path(path).stem), **kwargs)


def descriptor_from_spec(spec: str, input_size: int = 224) -> Descriptor:
    """'pixels' for the baseline, 'shapes-sscd' for the shipped learned descriptor of the zoo's
    shapes world, or a path to a TorchScript / .pt2 file (the CLI's --descriptor)."""
    if spec == "pixels":
        return PixelDescriptor()
    if spec == "shapes-sscd":
        from osmos.replication.copy_descriptor import ShapesCopyDescriptor

        return ShapesCopyDescriptor()
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"descriptor must be 'pixels', 'shapes-sscd' or a TorchScript / .pt2 file, got {spec!r} "
                     "(no such file)")
    return ModuleDescriptor.from_file(path, input_size=input_size)
