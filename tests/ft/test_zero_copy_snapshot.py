"""Zero-copy snapshots: with osmos.ft.SnapshotAdamW the parameters and moments live in the
manager's slots, the optimizer writes them there, and a snapshot copies only the rest.
(SIGKILL recovery with this optimizer: tests/ft/test_snapshot.py, optimizer="SnapshotAdamW".)"""

import pytest
import torch
from _helpers import assert_state_equal
from _helpers import manager  # noqa: F401 - the fixture

import osmos.ft.snapshot as snapshot_module
from osmos.ft import SnapshotAdamW
from osmos.ft.restore import read_snapshot, restore_or_init, snapshot_is_intact
from osmos.ft.snapshot import Snapshotter


def _build(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.BatchNorm1d(256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 64))
    return model, SnapshotAdamW(model.parameters(), lr=1e-2)


def _step(model, opt, step):
    g = torch.Generator().manual_seed(step)
    opt.zero_grad()
    model(torch.randn(8, 32, generator=g)).square().mean().backward()
    opt.step()


def _live_state(model, opt):
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}}


def _assert_snapshot_is(record, live):
    got = read_snapshot(record)
    assert_state_equal(got["model"], live["model"])
    assert_state_equal(got["optimizer"]["state"], live["optimizer"])


def _copied_bytes(monkeypatch):
    """Record the bytes every snapshot copy moves (checksum-only passes move nothing)."""
    moved = []
    real = snapshot_module.copy_with_crc32c

    def counting(src, dst=None, nthreads=None):
        if dst is not None:
            moved.append(sum(getattr(s, "nbytes", None) or len(s) for s in src))
        return real(src, dst, nthreads)

    monkeypatch.setattr(snapshot_module, "copy_with_crc32c", counting)
    return moved


def test_parameters_live_in_the_slots_and_snapshots_copy_only_the_rest(manager, monkeypatch):
    model, opt = _build()
    moved = _copied_bytes(monkeypatch)
    snap = Snapshotter(model, opt, client=manager.client(), rank=0)
    assert snap.zero_copy
    param_bytes = 3 * sum(p.nbytes for p in model.parameters())  # parameters and both moments
    slots = set()
    for step in range(5):
        _step(model, opt, step)
        snap.step(step)
        snap.wait()
        record = manager.client().request("latest", rank=0)["snapshot"]
        assert record["step"] == step and snapshot_is_intact(record)
        _assert_snapshot_is(record, _live_state(model, opt))
        slots.add(record["slot"])
        buf = snap._maps[record["path"]].buf
        for p in model.parameters():  # the parameters are the snapshot's bytes
            assert buf.data_ptr() <= p.data_ptr() < buf.data_ptr() + buf.numel()
    assert slots == {0, 1}  # the optimizer alternates between the two slots
    assert moved and max(moved) < param_bytes / 10, (moved, param_bytes)
    snap.close()
    for p in model.parameters():  # back in private memory, values unchanged
        assert all(p.data_ptr() < m.buf.data_ptr() or p.data_ptr() >= m.buf.data_ptr() + m.size
                   for m in snap._maps.values() if m.buf is not None)
    _step(model, opt, 99)  # still trains after close


def test_published_snapshot_is_not_overwritten_by_later_steps(manager):
    model, opt = _build()
    snap = Snapshotter(model, opt, client=manager.client(), rank=0, every=3)
    for step in range(4):
        _step(model, opt, step)
        snap.step(step)
    snap.wait()
    record = manager.client().request("latest", rank=0)["snapshot"]
    assert record["step"] == 3
    live = _live_state(model, opt)
    for step in range(4, 6):  # two steps that are not snapshots: they write the other slot in place
        _step(model, opt, step)
        snap.step(step)
    _assert_snapshot_is(record, live)
    assert snapshot_is_intact(record)
    snap.close()


def test_snapshot_without_an_optimizer_step_falls_back_to_copying(manager):
    model, opt = _build()
    snap = Snapshotter(model, opt, client=manager.client(), rank=0)
    snap.step(0, block=True)  # before any optimizer step
    _assert_snapshot_is(manager.client().request("latest", rank=0)["snapshot"], _live_state(model, opt))
    _step(model, opt, 1)
    snap.step(1, block=True)
    snap.step(1, block=True)  # again, with no step in between
    record = manager.client().request("latest", rank=0)["snapshot"]
    _assert_snapshot_is(record, _live_state(model, opt))
    _step(model, opt, 2)
    snap.step(2, block=True)
    _assert_snapshot_is(manager.client().request("latest", rank=0)["snapshot"], _live_state(model, opt))
    snap.close()


def test_restores_into_torch_adamw_and_back(manager):
    model, opt = _build()
    snap = Snapshotter(model, opt, client=manager.client(), rank=0, extra_state={"pos": 7})
    for step in range(3):
        _step(model, opt, step)
        snap.step(step)
    snap.close()
    live = _live_state(model, opt)
    torch_model, _ = _build(seed=1)
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-2)
    start, extra = restore_or_init(torch_model, torch_opt, client=manager.client(), rank=0)
    assert (start, extra) == (3, {"pos": 7})
    assert_state_equal(torch_model.state_dict(), live["model"])
    again, again_opt = _build(seed=2)
    restore_or_init(again, again_opt, client=manager.client(), rank=0)
    assert_state_equal(again.state_dict(), live["model"])
    _step(again, again_opt, 3), _step(model, opt, 3)
    assert_state_equal(again.state_dict(), model.state_dict())


def test_bad_configuration_is_rejected(manager):
    model, opt = _build()
    torch_opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match="SnapshotAdamW"):
        Snapshotter(model, torch_opt, client=manager.client(), zero_copy=True)
    with pytest.raises(ValueError, match="reserve_bytes"):
        Snapshotter(model, opt, client=manager.client(), reserve_bytes=-1)
    copying = Snapshotter(model, opt, client=manager.client(), rank=1, zero_copy=False)
    assert not copying.zero_copy
    _step(model, opt, 0)
    copying.step(0, block=True)
    copying.close()
    assert opt.destination is None
    big = {"blob": torch.zeros(1 << 18)}  # 1 MiB of user state, more than the reserve below
    snap = Snapshotter(model, opt, client=manager.client(), rank=2, extra_state=lambda: big, reserve_bytes=4096)
    _step(model, opt, 1)
    snap.step(1)
    with pytest.raises(RuntimeError, match="snapshot failed") as info:
        snap.wait()
    assert "reserve_bytes" in str(info.value.__cause__)
    snap.close()


def test_checksums_only_on_expected_snapshot_steps_and_computed_when_unexpected(manager):
    model, opt = _build()
    snap = Snapshotter(model, opt, client=manager.client(), rank=0, every=2)
    _step(model, opt, 0)  # nothing announced yet: checksummed
    assert opt.last_crc32c
    snap.step(0)
    for step in (1, 2, 3):
        _step(model, opt, step)
        assert bool(opt.last_crc32c) == (step % 2 == 0)  # only steps that will be snapshots
        snap.step(step)
    _step(model, opt, 4)
    assert opt.last_crc32c
    snap.step(4)
    _step(model, opt, 5)  # not expected to be a snapshot
    assert not opt.last_crc32c
    snap.every = 1
    snap.step(5, block=True)  # an unplanned snapshot: checksums computed from the slot
    record = manager.client().request("latest", rank=0)["snapshot"]
    assert record["step"] == 5 and snapshot_is_intact(record)
    _assert_snapshot_is(record, _live_state(model, opt))
    snap.close()
