"""Per-parameter EF21 buffers kept as one flat float32 tensor per DDP bucket.

DDP hands the hook flat buckets whose composition can change (DDP rebuilds its buckets after the
first iteration, and a restarted job starts from the initial buckets again). EF21's state is
per coordinate, so it is keyed by parameter: every parameter gets a stable key (the order in which
the hook first meets it, which is the same in every run of the same model), and each buffer
lives as a per-parameter view into the flat tensor of the bucket that holds the parameter now.
When a bucket's composition changes the flat tensor is rebuilt from those views, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class BucketLayout:
    """One bucket's parameters (keys, element offsets, sizes), its flat buffers by name
    (float32 [numel]) and whether they were just created (no EF21 state yet)."""

    keys: tuple[int, ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    flats: dict[str, Tensor]
    fresh: bool


class ParamSlots:
    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._key_of: dict[int, int] = {}
        self._params: list[Tensor] = []  # strong refs, so id() keys stay valid
        self._numels: list[int] = []
        self._views: dict[str, dict[int, Tensor]] = {name: {} for name in names}
        self._buckets: dict[int, BucketLayout] = {}

    def _key(self, p: Tensor) -> int:
        key = self._key_of.get(id(p))
        if key is None:
            key = len(self._params)
            if key < len(self._numels) and self._numels[key] != p.numel():
                raise ValueError(
                    f"loaded EF21 state does not match the model: parameter #{key} has {p.numel()} "
                    f"elements, the state_dict has {self._numels[key]}")
            if key >= len(self._numels):
                self._numels.append(p.numel())
            self._key_of[id(p)] = key
            self._params.append(p)
        return key

    def bucket(self, index: int, params: list[Tensor], device: torch.device) -> BucketLayout:
        keys = tuple(self._key(p) for p in params)
        layout = self._buckets.get(index)
        if layout is not None and layout.keys == keys:
            return layout
        numels = tuple(self._numels[k] for k in keys)
        offsets = tuple(sum(numels[:i]) for i in range(len(numels)))
        known = all(k in self._views[name] for name in self.names for k in keys)
        flats = {}
        for name in self.names:
            if known:
                flats[name] = torch.cat([self._views[name][k].reshape(-1).to(device) for k in keys])
            else:
                flats[name] = torch.zeros(sum(numels), dtype=torch.float32, device=device)
            for k, off, n in zip(keys, offsets, numels):
                self._views[name][k] = flats[name][off:off + n]
        layout = BucketLayout(keys, offsets, numels, flats, fresh=not known)
        self._buckets[index] = layout
        return layout

    def scale_(self, name: str, factor: float) -> None:
        for view in self._views[name].values():  # every key once, bucketed or only loaded
            view.mul_(factor)

    def state_dict(self) -> dict:
        """{"numels": [per key], name: [per-key float32 tensor (CPU clone)]} for keys with state."""
        count = len([k for k in range(len(self._numels)) if all(k in self._views[n] for n in self.names)])
        return {"numels": list(self._numels[:count]),
                **{name: [self._views[name][k].detach().cpu().clone() for k in range(count)] for name in self.names}}

    def load_state_dict(self, sd: dict) -> None:
        """Replace all state; parameters are matched to keys again as the hook meets them."""
        numels = [int(n) for n in sd["numels"]]
        for name in self.names:
            if name not in sd or len(sd[name]) != len(numels):
                raise ValueError(f"EF21 state_dict lacks buffer {name!r} for {len(numels)} parameters")
            for k, (t, n) in enumerate(zip(sd[name], numels)):
                if t.numel() != n:
                    raise ValueError(f"EF21 state_dict buffer {name!r} #{k} has {t.numel()} elements, expected {n}")
        self._key_of.clear()
        self._params.clear()
        self._buckets.clear()
        self._numels = numels
        self._views = {name: {k: sd[name][k].reshape(-1).to(torch.float32).clone() for k in range(len(numels))}
                       for name in self.names}
