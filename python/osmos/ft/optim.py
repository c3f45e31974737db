"""SnapshotAdamW: AdamW whose step can write the new parameters and moments somewhere else.

``torch.optim.AdamW`` updates in place. ``SnapshotAdamW`` computes the same update (same
formula and float32 operation order as its single-tensor path, same ``state_dict`` format, so
either optimizer can load the other's state) with one fused native kernel (``osmos._C.adamw_snapshot``) that may write its
outputs to other buffers and checksum them (CRC-32C) while they are still in the cache.

A ``Snapshotter`` that sees this optimizer points ``destination`` at its shared-memory snapshot
slot: each step then reads the parameters and moments from where they are and writes the new
ones straight into the slot the manager handed out, and the parameters are re-pointed there.
The parameters and optimizer state of a snapshot are then never copied; the step pays for the
out-of-place write (the same bytes as in place, but slower in practice) and the checksums (see
``osmos.ft.snapshot`` and benchmarks/RESULTS.md). Without a destination the step is an ordinary
in-place AdamW.

Limits: float32 parameters in host memory, dense gradients; no AMSGrad, maximize or
capturable modes (use ``torch.optim.AdamW`` and the copying ``Snapshotter`` for those).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from osmos import _native
from osmos.ft.checksum import copy_with_crc32c
from osmos.ops._common import num_threads

# destination(index, kind, like) -> tensor shaped like ``like`` (float32, contiguous, host memory)
# where the step writes parameter ``index``'s new value (kind "param") or moment ("exp_avg",
# "exp_avg_sq"); ``index`` counts parameters across param_groups in order.
Destination = Callable[[int, str, torch.Tensor], torch.Tensor]

KINDS = ("param", "exp_avg", "exp_avg_sq")

# torch.optim.AdamW's other param_group entries, at the only values this optimizer implements: kept in
# the groups so that state_dicts move between the two optimizers both ways (torch fills a missing
# entry with its Adam default, e.g. coupled weight decay).
TORCH_FLAGS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False, differentiable=False,
                   fused=None, decoupled_weight_decay=True)


def _check_hparams(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not (isinstance(lr, (int, float)) and lr >= 0):
        raise ValueError(f"lr must be a non-negative number, got {lr!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: float) -> list[float]:
    """The kernel's seven scalars for one step number, computed in double as torch computes them."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    return [1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, bias_correction2 ** 0.5, eps, -(lr / bias_correction1)]


def reference_step(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, s: list[float]) -> tuple:
    """The kernel's update in torch ops (the same ops as torch.optim.AdamW's single-tensor path):
    returns new (p, m, v), inputs untouched."""
    decay, w, beta2, omb2, bc2_sqrt, eps, neg_step = s
    p = p.mul(decay)
    m = m.lerp(g, w)
    v = v.mul(beta2).addcmul_(g, g, value=omb2)
    denom = (v.sqrt() / bc2_sqrt).add_(eps)
    return p.addcdiv_(m, denom, value=neg_step), m, v


class SnapshotAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with a fused native step that can write out of place.

    Args:
        params, lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (same defaults).
        threads: CPU threads of the fused step; default torch's intra-op thread count.

    Attributes set by a ``Snapshotter`` (users normally leave them alone):
        destination: a ``Destination`` callable or None (in place).
        checksum: compute the CRC-32C of every tensor written; they land in ``last_crc32c``,
            a dict from data pointer to checksum, for the tensors of the last step.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, threads: int | None = None):
        _check_hparams(lr, betas, eps, weight_decay)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **TORCH_FLAGS))
        for i, p in enumerate(self.params()):
            if p.dtype != torch.float32 or p.device.type != "cpu" or not p.is_contiguous():
                raise TypeError(f"SnapshotAdamW takes contiguous float32 parameters in host memory; parameter {i} "
                                f"is {p.dtype} on {p.device}{'' if p.is_contiguous() else ', non-contiguous'}")
        self.threads = threads
        self.destination: Destination | None = None
        self.checksum = False
        self.last_crc32c: dict[int, int] = {}

    def params(self) -> list[torch.Tensor]:
        """Every parameter, across param_groups in order (the ``index`` of ``destination``)."""
        return [p for group in self.param_groups for p in group["params"]]

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _target(self, index: int, kind: str, src: torch.Tensor) -> torch.Tensor:
        if self.destination is None:
            return src
        out = self.destination(index, kind, src)
        if out.shape != src.shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(f"destination({index}, {kind!r}) must return a contiguous float32 host tensor of shape "
                             f"{tuple(src.shape)}, got {out.dtype} {tuple(out.shape)} on {out.device}")
        return out

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_crc32c = {}
        moved: list[tuple[torch.Tensor, str, torch.Tensor, torch.Tensor]] = []  # (param, kind, src, dst), no update
        index = 0
        for group in self.param_groups:
            for key in ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay"):
                if group.get(key, TORCH_FLAGS[key]) != TORCH_FLAGS[key]:
                    raise ValueError(f"SnapshotAdamW implements {key}={TORCH_FLAGS[key]} only, the param group "
                                     f"has {key}={group[key]!r}")
            beta1, beta2 = group["betas"]
            by_step: dict[float, list] = {}  # one kernel call per step number (bias corrections differ)
            for p in group["params"]:
                i, index = index, index + 1
                if p.grad is None:
                    if self.destination is not None:  # keep the whole state in the destination
                        for kind in KINDS:
                            src = p if kind == "param" else self.state[p].get(kind)
                            if src is not None:
                                moved.append((p, kind, src, self._target(i, kind, src)))
                    continue
                if p.grad.is_sparse:
                    raise TypeError("SnapshotAdamW does not support sparse gradients")
                state = self._state_of(p)
                state["step"] += 1
                g = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
                if g.dtype != torch.float32:
                    raise TypeError(f"parameter {i}'s gradient is {g.dtype}; SnapshotAdamW needs float32 gradients")
                outs = [self._target(i, kind, src) for kind, src in
                        zip(KINDS, (p, state["exp_avg"], state["exp_avg_sq"]))]
                by_step.setdefault(float(state["step"]), []).append((p, g, state, outs))
            for step, items in by_step.items():
                s = scalars(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], step)
                self._update(items, s)
        if moved:
            copy = [m for m in moved if m[2].data_ptr() != m[3].data_ptr()]
            stay = [m for m in moved if m[2].data_ptr() == m[3].data_ptr()]
            crcs = (copy_with_crc32c([src.detach() for *_, src, _ in copy], [dst for *_, dst in copy], self.threads)
                    + copy_with_crc32c([src.detach() for *_, src, _ in stay], None, self.threads))
            for (p, kind, _, dst), crc in zip(copy + stay, crcs):
                self._repoint(p, kind, dst)
                self.last_crc32c[dst.data_ptr()] = crc
        return loss

    def _repoint(self, p: torch.Tensor, kind: str, dst: torch.Tensor) -> None:
        """Make ``dst`` the storage of parameter ``p`` (kind "param") or of its moment ``kind``."""
        if kind == "param":
            if p.data_ptr() != dst.data_ptr():
                p.data = dst
        else:
            self.state[p][kind] = dst

    def _update(self, items: list, s: list[float]) -> None:
        native = _native.C is not None and hasattr(_native.C, "adamw_snapshot")
        if native:
            ptrs = [[p.data_ptr(), g.data_ptr(), st["exp_avg"].data_ptr(), st["exp_avg_sq"].data_ptr()]
                    + [o.data_ptr() for o in outs] for p, g, st, outs in items]
            crcs = _native.C.adamw_snapshot(ptrs, [p.numel() for p, *_ in items], s, self.checksum,
                                            self.threads or num_threads())
        else:  # pure torch (no native module): same ops, then the checksums in a second pass
            for p, g, st, outs in items:
                for out, new in zip(outs, reference_step(p.detach(), g, st["exp_avg"], st["exp_avg_sq"], s)):
                    out.copy_(new)
            crcs = copy_with_crc32c([o for *_, outs in items for o in outs]) if self.checksum else []
        for j, (p, _, st, outs) in enumerate(items):
            for k, (kind, out) in enumerate(zip(KINDS, outs)):
                self._repoint(p, kind, out)
                if self.checksum:
                    self.last_crc32c[out.data_ptr()] = crcs[3 * j + k]

