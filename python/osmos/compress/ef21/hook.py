"""`ef21_hook`: the EF21 / EF21-W DDP communication hook.

Per bucket and round on rank i (x = the bucket's local gradient, s_i = 1 / (n w_i), 1 for EF21):
  c_i = C(s_i x - g_i) per parameter, g_i <- g_i + c_i          (osmos.ops.topk_compress for TopK)
  all_gather one int32 message per rank: [count, D_i^2 per parameter (float32 bits, for online
  EF21-W weights; NaN when unknown) ..., indices (int32) ..., values (float32 bits) ...]
  (indices are omitted for compressors whose indices every rank can recompute; count is 0 for a
  rank sitting out the round under partial participation; the buffer is padded to the largest k)
  g <- g + sum_r w_r c_r on every rank, in the same order, so all ranks hold bitwise-identical g,
  which the hook returns as the bucket's averaged gradient.
The first time a bucket is seen with init="full", g_i^0 = s_i x and g^0 = mean of x (one dense
all_reduce).
"""


import math

import torch
import torch.distributed as dist
from torch import Tensor

from osmos.compress.ef21.slots import BucketLayout
from osmos.compress.ef21.state import SUPPORTED_DTYPES, EF21State
from osmos.ops import topk_accumulate_



def ef21_hook(state: EF21State, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    buffer = bucket.buffer()
    state.check_bucket(buffer)
    params = bucket.parameters()
    if sum(p.numel() for p in params) != buffer.numel():
        raise RuntimeError("ef21_hook: bucket buffer size differs from its parameters' total size")
    state.begin_round()
    layout = state.slots.bucket(bucket.index(), params, buffer.device)
    if layout.fresh and state.init == "full":
        future = _dense_round(state, buffer, layout)
    else:
        future = _compressed_round(state, buffer, layout)
    if bucket.is_last():
        state.end_round()
    return future


def _dense_round(state: EF21State, buffer: Tensor, layout: BucketLayout):
    """g_i^0 = s_i x, g^0 = mean_i x (= sum_i w_i g_i^0)."""
    x = buffer.to(torch.float32, copy=True)
    layout.flats["g_local"].copy_(x).mul_(state.scale())
    if state.online:
        layout.flats["prev_grad"].copy_(x)
    state.add_movement([[math.nan]] * state.world)
    g = layout.flats["g_global"]

    def finish(fut):
        g.copy_(fut.value()[0]).div_(state.world)
        return _result(buffer, g)

    return dist.all_reduce(x, group=state.group, async_op=True).get_future().then(finish)


def _compressed_round(state: EF21State, buffer: Tensor, layout: BucketLayout):
    comp = state.compressor
    x = buffer.to(torch.float32)
    header = 1 + len(layout.keys)
    movement = torch.full((len(layout.keys),), math.nan, dtype=torch.float32)
    if state.online:
        prev = layout.flats["prev_grad"]
        if not layout.fresh:
            for j, (off, n) in enumerate(zip(layout.offsets, layout.numels)):
                movement[j] = float(torch.sum((x[off:off + n] - prev[off:off + n]).double() ** 2))
        prev.copy_(x)
    if state.scale() != 1.0:
        x = x * state.scale()
    g_local = layout.flats["g_local"]
    seeds = [state.param_seed(k) for k in layout.keys]
    kmax = sum(comp.num_selected(n) for n in layout.numels)
    with_indices = not comp.shares_indices
    message = torch.zeros(header + (2 if with_indices else 1) * kmax, dtype=torch.int32, device=buffer.device)
    message[1:header] = movement.view(torch.int32).to(buffer.device)
    if state.participates(state.rank):
        values, indices = [], []
        for off, n, seed in zip(layout.offsets, layout.numels, seeds):
            v, i = comp.step_(x[off:off + n], g_local[off:off + n], seed)
            values.append(v.to(torch.float32))
            if with_indices:
                indices.append(i + off)
        message[0] = kmax
        if with_indices:
            message[header:header + kmax] = torch.cat(indices).to(torch.int32)
        message[-kmax:] = torch.cat(values).view(torch.int32)
    shared = None if with_indices else _shared_indices(comp, layout, seeds, buffer.device)
    table = torch.empty(state.world, message.numel(), dtype=message.dtype, device=message.device)
    g = layout.flats["g_global"]

    def finish(fut):
        counts = table[:, 0].long()
        state.add_movement(table[:, 1:header].view(torch.float32).double().tolist())
        weights = torch.tensor(state.weights, dtype=torch.float32, device=table.device)
        values = table[:, -kmax:].view(torch.float32)
        if with_indices:
            topk_accumulate_(g, values, table[:, header:header + kmax], counts=counts, weights=weights)
        elif bool(counts.any()):
            rows = (values * weights[:, None])[counts > 0]
            if shared is None:
                g.add_(rows.sum(0))
            else:
                topk_accumulate_(g, rows, shared.expand(rows.shape[0], -1))
        return _result(buffer, g)

    return _all_gather(table, message, state.group).then(finish)


def _result(buffer: Tensor, g: Tensor) -> Tensor:
    """What the hook hands back to DDP: g itself when the bucket is float32 (DDP copies the result
    into the parameters' gradients, so a copy into the bucket first would be a wasted pass),
    else g cast into the bucket."""
    return g if buffer.dtype == torch.float32 else buffer.copy_(g)


def _all_gather(table: Tensor, message: Tensor, group):
    """all_gather of message into the rows of table, as a future; one collective into a single
    buffer where the backend supports it, else a list of row views."""
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    try:
        return gather_single(table.view(-1), message, group=group, async_op=True).get_future()
    except (RuntimeError, NotImplementedError, ValueError):
        return dist.all_gather(list(table.unbind(0)), message, group=group, async_op=True).get_future()


def _shared_indices(comp, layout: BucketLayout, seeds: list, device):
    """Bucket-level indices of a shares_indices compressor (None: dense, all entries in order)."""
    parts = [comp.indices(n, seed, device) for n, seed in zip(layout.numels, seeds)]
    if parts[0] is None:
        return None
    return torch.cat([p + off for p, off in zip(parts, layout.offsets)])


def register_ef21_hook(model, state: EF21State) -> None:
    """Checks that `model` (a DistributedDataParallel) matches `state` (process group, gradient
    dtypes) before any communication, then registers `ef21_hook`."""
    group = getattr(model, "process_group", None)
    if group is None:
        raise TypeError("register_ef21_hook expects a torch.nn.parallel.DistributedDataParallel model")
    if group is not state.group and not (group == dist.group.WORLD and state.group == dist.group.WORLD):
        raise ValueError("process group mismatch: the EF21State was built for another process group than the DDP model's")
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"ef21_hook supports float32, float16 and bfloat16 gradients; parameter {name!r} is {p.dtype}")
    model.register_comm_hook(state, ef21_hook)
