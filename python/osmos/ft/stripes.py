"""Cross-node protection of snapshots: Reed-Solomon stripes over ranks on different nodes.

Placement (``StripePlan``). With N = world_size / ranks_per_node nodes, rank r lives on node
r // ranks_per_node. For each local rank, the nodes are cut into groups of k consecutive nodes
(the last group may be smaller); the snapshots of the group's ranks are the data blocks of one
stripe, and its m parity blocks are held by the same local rank on the m nodes that follow the
group (mod N). Those are outside the group because N >= k + m, so losing any m nodes leaves every
stripe at least k of its blocks. Holders rotate with the groups, so parity memory is spread
(about m/k of a snapshot per rank when k divides N).

Protect (``StripeProtector.protect``, collective over the protector's gloo group, every rank
with the snapshot of the same step): each parity holder receives its stripe's data blocks
(zero-padded to the longest, rounded up to 64 bytes) in chunks of ``chunk_bytes`` (k chunks in
memory at a time, not k whole snapshots) and encodes each chunk straight into a slot of its own
node's manager (key ``parity_s<stripe>_p<i>``, two slots like any rank, so the
previous parity stays whole until the new one is published), and stores with it the data
snapshots' metadata (layout, checksums, sizes): a node that lost everything rebuilds its
snapshot's bytes and its record from the parity holders. A barrier ends the round, so no rank
starts its next snapshot before every parity of this one is published; a data slot is only
rewritten once a newer snapshot is protected everywhere.

Recover (``StripeProtector.recover``, collective, at start-up): ranks exchange which snapshot
steps they still hold intact (data snapshots are checksummed first; a corrupted one counts as
lost) and which parity, choose the newest step that every stripe can rebuild,
and each rank that lost its snapshot receives k surviving blocks, decodes, and publishes the
rebuilt snapshot to its new manager. ``restore_or_init(..., protector=...)`` then restores that
step everywhere (checksums verified), so all ranks resume from the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from osmos.ft.checksum import crc32c
from osmos.ft.ec import RSCodec
from osmos.ft.manager import ManagerClient
from osmos.ft.restore import SnapshotCorrupted, snapshot_is_intact
from osmos.ft.snapshot import _Mapping
from osmos.ops._common import check_int
from osmos.ops.gf256_matmul import matmul_addresses

_ALIGN = 64
_META_KEYS = ("step", "layout", "crc32c", "skeleton", "nbytes")  # what a rebuilt record needs


@dataclass(frozen=True)
class Stripe:
    """One stripe: ``data[j]`` holds data block j, ``parity[i]`` holds parity block k + i."""

    index: int
    data: tuple[int, ...]
    parity: tuple[int, ...]

    def parity_key(self, i: int) -> str:
        return f"parity_s{self.index}_p{i}"


class StripePlan:
    """Which ranks form each stripe and which ranks hold its parity (see the module docstring).

    Args:
        world_size: ranks in the job.
        k: data blocks per stripe; default min(4, nodes - m).
        m: parity blocks per stripe (node losses survived); default 1.
        ranks_per_node: ranks sharing one node (and one manager); they never share a stripe.
    """

    def __init__(self, world_size: int, k: int | None = None, m: int = 1, ranks_per_node: int = 1):
        check_int("world_size", world_size, low=1)
        check_int("ranks_per_node", ranks_per_node, low=1)
        check_int("m", m, low=1)
        if world_size % ranks_per_node:
            raise ValueError(f"world_size ({world_size}) must be a multiple of ranks_per_node ({ranks_per_node})")
        nodes = world_size // ranks_per_node
        k = min(4, nodes - m) if k is None else k
        check_int("k", k, low=1)
        if nodes < k + m:
            raise ValueError(f"k + m ({k} + {m}) must be at most the number of nodes ({nodes})")
        self.world_size, self.k, self.m, self.ranks_per_node, self.nodes = world_size, k, m, ranks_per_node, nodes
        stripes = []
        for local in range(ranks_per_node):
            for first in range(0, nodes, k):
                group = range(first, min(first + k, nodes))
                holders = [(group[-1] + 1 + i) % nodes for i in range(m)]
                stripes.append(Stripe(len(stripes), tuple(n * ranks_per_node + local for n in group),
                                      tuple(n * ranks_per_node + local for n in holders)))
        self.stripes: list[Stripe] = stripes

    def __repr__(self) -> str:
        return (f"StripePlan(world_size={self.world_size}, k={self.k}, m={self.m}, "
                f"ranks_per_node={self.ranks_per_node})")

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node


def _block_len(members: list[dict]) -> int:
    n = max(m["nbytes"] for m in members)
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class StripeProtector:
    """Computes, places and recovers stripe parity through torch.distributed.

    Create it on every rank after ``dist.init_process_group`` (it creates its own gloo group,
    which is a collective call). Pass it to ``Snapshotter(protector=...)`` and to
    ``restore_or_init(protector=...)``.
    """

    def __init__(self, plan: StripePlan, group: dist.ProcessGroup | None = None,
                 timeout: timedelta = timedelta(minutes=5), chunk_bytes: int = 16 << 20):
        if not dist.is_initialized():
            raise RuntimeError("StripeProtector needs torch.distributed to be initialised")
        if dist.get_world_size() != plan.world_size:
            raise ValueError(f"plan is for {plan.world_size} ranks, the job has {dist.get_world_size()}")
        check_int("chunk_bytes", chunk_bytes, low=_ALIGN)
        self.plan = plan
        self.chunk_bytes = chunk_bytes // _ALIGN * _ALIGN
        self.group = group if group is not None else dist.new_group(backend="gloo", timeout=timeout)
        self._codecs: dict[int, RSCodec] = {}
        self._maps: dict[str, _Mapping] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _codec(self, k: int) -> RSCodec:
        if k not in self._codecs:
            self._codecs[k] = RSCodec(k, self.plan.m)
        return self._codecs[k]

    def _slot_bytes(self, record: dict, nbytes: int) -> torch.Tensor:
        """The first nbytes of a published slot, as a writable uint8 tensor over shared memory."""
        m = self._maps.get(record["path"])
        if m is None or m.size != record["size"]:
            if m is not None:
                m.close()
            m = self._maps[record["path"]] = _Mapping(record["path"], record["size"], writable=True)
        return m.buf[:nbytes]

    def _gather(self, obj) -> list:
        out = [None] * self.plan.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _chunks(self, block: int) -> list[tuple[int, int]]:
        """The [start, end) byte ranges a block of ``block`` bytes is streamed in."""
        return [(a, min(a + self.chunk_bytes, block)) for a in range(0, block, self.chunk_bytes)]

    def _send(self, t: torch.Tensor, dst: int) -> None:
        dist.send(t, dst, group=self.group)

    def _recv(self, t: torch.Tensor, src: int) -> None:
        dist.recv(t, src, group=self.group)

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    # -- protect -------------------------------------------------------------------------------
    def protect(self, client: ManagerClient, rank: int, step: int) -> None:
        """Compute and place the parity of every stripe for the snapshots of ``step`` (collective)."""
        record = client.request("latest", rank=rank)["snapshot"]
        if record is None or record["step"] != step:
            raise RuntimeError(f"rank {rank} has no published snapshot of step {step} to protect")
        metas = self._gather({key: record[key] for key in _META_KEYS})
        steps = {m["step"] for m in metas}
        if steps != {step}:
            raise RuntimeError(f"ranks protect different steps {sorted(steps)}: every rank must snapshot at the same steps")
        for stripe in self.plan.stripes:
            members = [metas[r] for r in stripe.data]
            block = _block_len(members)
            for i, holder in enumerate(stripe.parity):
                if rank == holder:
                    self._hold_parity(client, stripe, i, members, block, step)
                elif rank in stripe.data:
                    mine = self._slot_bytes(record, record["nbytes"])
                    for a, b in self._chunks(block):
                        if a < record["nbytes"]:
                            self._send(mine[a: min(b, record["nbytes"])], holder)
        dist.barrier(group=self.group)

    def _hold_parity(self, client: ManagerClient, stripe: Stripe, i: int, members: list[dict], block: int,
                     step: int) -> None:
        k = len(stripe.data)
        key = stripe.parity_key(i)
        slot = client.request("begin", rank=key, nbytes=block)
        out = self._slot_bytes({"path": slot["path"], "size": slot["size"]}, block)
        row = self._codec(k).generator[k + i: k + i + 1].contiguous()
        chunk = torch.empty(k, min(self.chunk_bytes, block), dtype=torch.uint8)
        crc = 0
        for a, b in self._chunks(block):
            for j, (src, meta) in enumerate(zip(stripe.data, members)):
                got = max(0, min(b, meta["nbytes"]) - a)  # the member's bytes in [a, b); zeros after
                if got:
                    self._recv(chunk[j, :got], src)
                chunk[j, got: b - a].zero_()
            matmul_addresses(row, [chunk[j].data_ptr() for j in range(k)], [out[a:].data_ptr()], b - a)
            crc = crc32c(out[a:b], crc)
        client.request("publish", rank=key, record={
            "slot": slot["slot"], "step": step, "size": slot["size"], "nbytes": block, "block": block,
            "stripe": stripe.index, "parity_index": i, "crc32c": crc, "members": members})

    # -- recover -------------------------------------------------------------------------------
    def recover(self, client: ManagerClient, rank: int) -> int | None:
        """Rebuild lost snapshots from the stripes' survivors (collective). Returns the step every
        rank should restore (now held by every rank's manager), or None when no
        snapshot was ever taken. Raises SnapshotCorrupted on every rank when snapshots exist but
        no step can be rebuilt everywhere (fall back to a persistent checkpoint)."""
        # A snapshot that fails its checksums counts as lost: the stripe rebuilds it like a lost node's.
        data = {r["step"]: r for r in client.request("complete", rank=rank)["snapshots"] if snapshot_is_intact(r)}
        parity = {}
        for stripe in self.plan.stripes:
            for i, holder in enumerate(stripe.parity):
                if holder == rank:
                    key = stripe.parity_key(i)
                    parity[key] = {r["step"]: r for r in client.request("complete", rank=key)["snapshots"]}
        have = self._gather({"data": sorted(data),
                             "parity": {key: {s: r["crc32c"] for s, r in v.items()} for key, v in parity.items()}})
        target = self._choose(have)
        if target is None and any(h["data"] for h in have):
            dist.barrier(group=self.group)
            raise SnapshotCorrupted(f"no snapshot step can be rebuilt on every rank: some stripe lost more "
                                    f"than m = {self.plan.m} of its blocks",
                                    step=max(s for h in have for s in h["data"]))
        if target is not None:
            for stripe in self.plan.stripes:
                self._rebuild_stripe(client, rank, stripe, target, have, data, parity)
            client.request("keep_until", rank=rank, step=target)
        dist.barrier(group=self.group)
        return target

    def _parity_steps(self, have: list[dict], stripe: Stripe) -> list[dict]:
        """For each parity block of the stripe: {step: CRC-32C} of the parity its holder still has."""
        return [have[h]["parity"].get(stripe.parity_key(i), {}) for i, h in enumerate(stripe.parity)]

    def _choose(self, have: list[dict]) -> int | None:
        candidates = sorted({s for h in have for s in h["data"]}, reverse=True)
        for step in candidates:
            ok = True
            for stripe in self.plan.stripes:
                present = sum(step in have[r]["data"] for r in stripe.data)
                if present == len(stripe.data):
                    continue
                par = sum(step in s for s in self._parity_steps(have, stripe))
                if present + par < len(stripe.data):
                    ok = False
                    break
            if ok:
                return step
        return None

    def _rebuild_stripe(self, client: ManagerClient, rank: int, stripe: Stripe, step: int, have: list[dict],
                        data: dict, parity: dict) -> None:
        k = len(stripe.data)
        lost = [j for j, r in enumerate(stripe.data) if step not in have[r]["data"]]
        if not lost:
            return
        held = self._parity_steps(have, stripe)
        par_ok = [i for i, s in enumerate(held) if step in s]
        used = ([j for j in range(k) if j not in lost] + [k + i for i in par_ok])[:k]
        # The holder of the first usable parity block tells the rebuilding ranks the block length
        # and the members' metadata (their own managers lost it).
        info_rank = stripe.parity[par_ok[0]]
        info = [None]
        if rank == info_rank:
            rec = parity[stripe.parity_key(par_ok[0])][step]
            info = [{"block": rec["block"], "members": rec["members"]}]
        dist.broadcast_object_list(info, src=info_rank, group=self.group)
        block, members = info[0]["block"], info[0]["members"]
        for j in lost:
            dest = stripe.data[j]
            blocks = {}
            for idx in used:
                src = stripe.data[idx] if idx < k else stripe.parity[idx - k]
                if rank == src and idx < k:
                    self._send(self._slot_bytes(data[step], members[idx]["nbytes"]), dest)
                elif rank == src:
                    rec = parity[stripe.parity_key(idx - k)][step]
                    self._send(self._slot_bytes(rec, block), dest)
                elif rank == dest:
                    buf = torch.zeros(block, dtype=torch.uint8)
                    self._recv(buf if idx >= k else buf[: members[idx]["nbytes"]], src)
                    if idx >= k:
                        if crc32c(buf) != held[idx - k][step]:
                            raise RuntimeError(f"parity block {idx - k} of stripe {stripe.index} fails its checksum")
                    blocks[idx] = buf
            if rank == dest:
                self._publish_rebuilt(client, rank, self._codec(k), blocks, j, members[j])

    def _publish_rebuilt(self, client: ManagerClient, rank: int, codec: RSCodec, blocks: dict, j: int,
                         meta: dict) -> None:
        slot = client.request("begin", rank=rank, nbytes=meta["nbytes"])
        rebuilt = codec.decode(blocks)[j]  # every lost block of the stripe is rebuilt; keep ours
        self._slot_bytes({"path": slot["path"], "size": slot["size"]}, meta["nbytes"]).copy_(rebuilt[: meta["nbytes"]])
        client.request("publish", rank=rank, record={**meta, "slot": slot["slot"], "size": slot["size"]})
