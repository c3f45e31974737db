"""A learned copy-detection descriptor for the zoo's shapes world, trained SSCD-style.

SSCD (Pizzi et al., 2022) learns features in which an image and its edited copies are close and
other images are far: two random augmentations of each training image are the positives of a
contrastive (InfoNCE) loss whose negatives are the other images of the batch, plus an entropy
(KoLeo) term that spreads the features over the sphere. Here the training images are fresh
procedural shapes renders (16 x 16, like the zoo models' data), the network a small CNN, and the
augmentations crop / resize, flip, colour jitter, blur and noise. Similar images that are not copies
(the same shape and colour elsewhere, another size) are exactly the negatives the loss pushes away.

`ShapesCopyDescriptor()` loads the shipped weights (`weights/shapes-sscd.safetensors`);
`python -m osmos.replication.copy_descriptor --minutes 6 --install` retrains them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osmos.replication.descriptors import Descriptor

WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes-sscd.safetensors"
INPUT_SIZE = 32


class CopyDetectionNet(nn.Module):
    """images [B, 3, 32, 32] (normalised to zero mean per channel) -> features [B, dim].

    Four 3x3 conv stages (strides `strides`, channels width, 2, 4, 4 x width) with GroupNorm and
    GELU, generalised-mean pooling (p = 3, as in SSCD) and a linear projection.
    """

    def __init__(self, width: int = 32, dim: int = 128, strides: tuple[int, ...] = (2, 2, 2, 1)):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers = []
        for i, stride in enumerate(strides):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1),
                       nn.GroupNorm(8, chans[i + 1]), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], dim)
        self.dim = dim
        self.architecture = {"width": width, "dim": dim, "strides": list(strides)}

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x).clamp(min=1e-6)
        pooled = h.pow(3).mean(dim=(2, 3)).pow(1 / 3)
        return self.head(pooled)


def _prepare(images: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> the network's input: 32 x 32, centred at 0.5."""
    if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                               antialias=True)
    return (images - 0.5) * 2


class ShapesCopyDescriptor(Descriptor):
    """The shipped learned descriptor (128-d), for shapes-world images of any size."""

    name = "shapes-sscd"

    def __init__(self, path: str | Path = WEIGHTS, net: CopyDetectionNet | None = None):
        if net is None:
            from safetensors.torch import load_file

            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"no copy-descriptor weights at {path}")
            meta = json.loads(path.with_suffix(".json").read_text())
            net = CopyDetectionNet(**meta["architecture"])
            net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        self.net = net.eval()
        self.dim = net.dim

    def features(self, images: Tensor) -> Tensor:
        return self.net(_prepare(images))


def _box_blur_batch(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image Gaussian blur (3x3 kernel, sigma [B]) of x [B, 3, H, W]."""
    b = x.shape[0]
    offs = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-offs.view(1, 3) ** 2 / (2 * sigma.view(b, 1).clamp(min=1e-3) ** 2))
    k1 = k1 / k1.sum(dim=1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0).view(3 * b, 1, 3, 3)
    out = F.conv2d(F.pad(x.reshape(1, 3 * b, *x.shape[-2:]), (1, 1, 1, 1), mode="replicate"), k2, groups=3 * b)
    return out.view_as(x)


def augment(images: Tensor, generator: torch.Generator, strength: float = 1.0, fade: float = 0.0) -> Tensor:
    """Random edited copies of images [B, 3, H, W] in [0, 1] -> [B, 3, 32, 32] in [0, 1]:
    a crop of 40-100% of the area (aspect 3/4-4/3) resized, horizontal flip (p 0.5), brightness /
    contrast / saturation jitter (+-30%) and per-channel gains (+-10%), Gaussian blur (p 0.5,
    sigma 0.3-1.2 px) and Gaussian noise (p 0.5, std up to 0.08). `strength` scales every range.
    fade > 0 also blends (p 0.5) towards a uniform grey of level 0.3-0.7 with weight up to `fade`
    (the washed-out look of a diffusion model's imperfect copies)."""
    b = images.shape[0]
    g = generator

    def u(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    area = 1 - strength * u(0.0, 0.6)
    aspect = torch.exp(strength * u(math.log(3 / 4), math.log(4 / 3)))
    sx = (area * aspect).sqrt().clamp(max=1.0)
    sy = (area / aspect).sqrt().clamp(max=1.0)
    tx, ty = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    grid = F.affine_grid(theta, (b, 3, INPUT_SIZE, INPUT_SIZE), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    j = 0.3 * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u(-j, j)).view(b, 1, 1, 1) + mean  # contrast
    x = x * (1 + u(-j, j)).view(b, 1, 1, 1)  # brightness
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * (1 + u(-j, j)).view(b, 1, 1, 1) + grey  # saturation
    x = x * (1 + 0.1 * strength * (2 * torch.rand(b, 3, 1, 1, generator=g) - 1))
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        x = torch.where(blur.view(b, 1, 1, 1), _box_blur_batch(x, u(0.3, 0.3 + 0.9 * strength)), x)
    if fade > 0:
        w = (torch.rand(b, generator=g) < 0.5).float() * u(0.0, fade)
        x = x * (1 - w.view(b, 1, 1, 1)) + w.view(b, 1, 1, 1) * u(0.3, 0.7).view(b, 1, 1, 1)
    noisy = (torch.rand(b, generator=g) < 0.5).float().view(b, 1, 1, 1)
    x = x + noisy * (0.08 * strength * torch.rand(b, 1, 1, 1, generator=g)) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def contrastive_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, entropy_weight: float = 0.1) -> Tensor:
    """InfoNCE over 2B L2-normalised features (each view's positive is the other view of its
    image; every other feature is a negative) minus `entropy_weight` x the KoLeo entropy estimate
    (mean log distance to the nearest other feature)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    nce = F.cross_entropy(sim, target)
    with torch.no_grad():
        near = (z @ z.T).masked_fill(torch.eye(2 * n, dtype=torch.bool), -2).argmax(dim=1)
    koleo = -torch.log((z - z[near]).norm(dim=1) + 1e-8).mean()
    return nce + entropy_weight * koleo


def sibling_renders(n: int, generator: torch.Generator, size: int = 16) -> Tensor:
    """2n renders [2n, 3, size, size]: n random images, then n siblings with the same shape, colour,
    style and background drawn elsewhere (position, size, angle). Image i and n + i look alike but
    are not copies: the hard negatives of copy detection in the shapes world."""
    from osmos.zoo import data as D

    a, geo = D.sample_attributes(n, generator), D.sample_attributes(n, generator)
    sib = D.Attributes(shape=a.shape, colour=a.colour, style=a.style, background=a.background,
                       cx=geo.cx, cy=geo.cy, radius=geo.radius, angle=geo.angle)
    return torch.cat([D.render(a, size), D.render(sib, size)])


def train(minutes: float = 6.0, max_steps: int = 3000, batch: int = 128, seed: int = 0, lr: float = 3e-3,
          pool: int = 16384, temperature: float = 0.1, entropy_weight: float = 0.1, siblings: bool = False,
          fade: float = 0.0, log_every: int = 50, **architecture) -> tuple[CopyDetectionNet, dict]:
    """Train on `pool` 16 x 16 shapes renders (rendered once) for `max_steps` or `minutes`, whichever
    ends first. With `siblings`, the pool is `sibling_renders` pairs and every batch holds both
    images of batch / 2 pairs (hard negatives); else batches are drawn at random. Returns (net, log)."""
    from osmos.zoo import data as D

    torch.manual_seed(seed)
    net = CopyDetectionNet(**architecture)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    half = pool // 2
    if siblings:
        chunks = [sibling_renders(min(512, half - i), g) for i in range(0, half, 512)]
        renders = torch.cat([c[: len(c) // 2] for c in chunks] + [c[len(c) // 2:] for c in chunks])
    else:
        renders = torch.cat([D.render(D.sample_attributes(min(1024, pool - i), g), 16) for i in range(0, pool, 1024)])
    step, losses, t0 = 0, [], time.time()
    while step < max_steps and time.time() - t0 < minutes * 60:
        if siblings:
            ids = torch.randperm(half, generator=g)[: batch // 2]
            images = renders[torch.cat([ids, ids + half])]
        else:
            images = renders[torch.randperm(pool, generator=g)[:batch]]
        v1, v2 = augment(images, g, fade=fade), augment(images, g, fade=fade)
        loss = contrastive_loss(net(_prepare(v1)), net(_prepare(v2)), temperature, entropy_weight)
        done = min(1.0, max(step / max_steps, (time.time() - t0) / (minutes * 60)))
        for group in opt.param_groups:  # warm-up, then cosine decay over the step or time budget
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * done))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if log_every and step % log_every == 0:
            print(f"  step {step}, loss {sum(losses[-log_every:]) / log_every:.4f}, {time.time() - t0:.0f} s", flush=True)
    net.eval()
    log = {"steps": step, "batch": batch, "seconds": round(time.time() - t0, 1), "seed": seed, "lr": lr,
           "temperature": temperature, "entropy_weight": entropy_weight, "sibling_negatives": siblings,
           "fade": fade,
           "final_loss_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
           "architecture": net.architecture, "training_images": pool,
           "parameters": sum(p.numel() for p in net.parameters())}
    return net, log


def save(net: CopyDetectionNet, log: dict, path: Path = WEIGHTS) -> None:
    """Weights as float16 safetensors + a JSON card beside them."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(log, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m osmos.replication.copy_descriptor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--entropy-weight", type=float, default=0.1)
    p.add_argument("--fade", type=float, default=0.0, help="max weight of the fade-to-grey augmentation")
    p.add_argument("--siblings", action="store_true",
                   help="batches of sibling pairs (hard negatives; measured worse at 12 min, see RESULTS.md)")
    p.add_argument("--out", type=Path, default=Path("out/shapes-sscd.safetensors"))
    p.add_argument("--install", action="store_true", help="write the package's shipped weights instead of --out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net, log = train(args.minutes, args.steps, args.batch, args.seed, temperature=args.temperature,
                     entropy_weight=args.entropy_weight, siblings=args.siblings, fade=args.fade)
    log["command"] = "python -m osmos.replication.copy_descriptor " + " ".join(sys.argv[1:] if argv is None else argv)
    save(net, log, WEIGHTS if args.install else args.out)
    print(json.dumps(log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
