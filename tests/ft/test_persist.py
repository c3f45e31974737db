"""Persistent fallback: managers flush snapshots to disk in the background (safetensors + JSON,
atomically, never blocking the trainer), and restore_or_init falls back to the newest persistent
checkpoint, loudly, when the in-memory snapshots are lost beyond repair. Bounded in time; no
process or /dev/shm segment is left behind."""

import copy
import json
import logging
import os
import threading
import time

import pytest
import torch
from _helpers import assert_state_equal, losses, run_trainer, segments, wait_flushed
from osmos.ft import persist
from osmos.ft.manager import _ManagerState, start_manager
from osmos.ft.persist import (
    PersistConfig,
    checkpoint_paths,
    list_checkpoints,
    read_checkpoint,
)
from osmos.ft.restore import SnapshotCorrupted, read_snapshot, restore_or_init
from osmos.ft.snapshot import Snapshotter
from safetensors.torch import load_file


@pytest.fixture
def managed(tmp_path):
    """start(**kwargs) starts a manager persisting to tmp_path/ckpt; all are ended at teardown."""
    before, handles = segments(), []

    def start(**kwargs):
        kwargs.setdefault("persist_dir", str(tmp_path / "ckpt"))
        handles.append(start_manager(job_id=f"persist-{os.getpid()}-{len(handles)}", **kwargs))
        return handles[-1]

    yield start
    for h in handles:
        h.end_job()
        assert h.proc.poll() is not None
    assert segments() == before, "shared-memory segments left behind"


def _tiny():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    return m, torch.optim.AdamW(m.parameters(), lr=0.1)


def _train(m, o, snap, steps):
    """Train ``steps`` steps with a blocking snapshot after each; the state after each step."""
    states = []
    for step in steps:
        o.zero_grad()
        m(torch.randn(3, 4)).square().mean().backward()
        o.step()
        snap.step(step, block=True)
        states.append({"model": {k: v.clone() for k, v in m.state_dict().items()},
                       "optimizer": copy.deepcopy(o.state_dict())})
    return states


def _train_flushed(m, o, snap, client, steps, every):
    """`_train`, waiting after each snapshot that makes a flush due (every `every`-th) until it is
    written: the flush thread writes the newest snapshot when it gets to it, so without the wait a
    slow flush could write a later step and the persisted steps would depend on timing."""
    states = []
    for i, step in enumerate(steps):
        states += _train(m, o, snap, [step])
        if (i + 1) % every == 0:
            wait_flushed(client, 0)
    return states


def test_flush_writes_safetensors_and_json_every_n_and_keeps_the_newest(managed, tmp_path):
    h = managed(persist_every=2, persist_keep=2)
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c, extra_state={"pos": 7})
    states = _train_flushed(m, o, snap, c, range(6), 2)
    snap.close()
    ckpt = str(tmp_path / "ckpt")
    assert wait_flushed(c, 0) == [5, 3]  # publications 2, 4, 6 were due; the step-1 one was pruned
    assert h.env["OSMOS_FT_PERSIST_DIR"] == ckpt
    st_path, js_path = checkpoint_paths(ckpt, 0, 5)
    assert sorted(os.listdir(os.path.dirname(st_path))) == sorted(
        os.path.basename(p) for s in (5, 3) for p in checkpoint_paths(ckpt, 0, s))  # no temporaries
    assert os.stat(st_path).st_mode & 0o777 == 0o600 and os.stat(js_path).st_mode & 0o777 == 0o600
    tensors = load_file(st_path)  # a valid safetensors file, tensors under their state paths
    assert_state_equal({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")},
                       states[5]["model"])
    assert torch.equal(tensors["optimizer.state.0.exp_avg"], states[5]["optimizer"]["state"][0]["exp_avg"])
    with open(js_path) as f:
        meta = json.load(f)
    assert meta["step"] == 5 and meta["rank"] == 0 and meta["job_id"] == h.job_id
    restored = read_checkpoint(ckpt, 0, 5)
    assert restored["step"] == 5 and restored["extra"] == {"pos": 7}
    assert_state_equal(restored["model"], states[5]["model"])
    assert_state_equal(restored["optimizer"], states[5]["optimizer"])
    # a flipped bit on disk is detected
    with open(st_path, "r+b") as f:
        f.seek(meta["layout"][0]["file_offset"])
        b = f.read(1)
        f.seek(meta["layout"][0]["file_offset"])
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ValueError, match="fails its checksum"):
        read_checkpoint(ckpt, 0, 5)
    c.close()


def test_a_flush_pins_its_slot_and_the_trainer_gets_another(tmp_path, monkeypatch):
    """While a flush is stuck (a slow disk), begin() returns at once with a slot that is neither
    the published one nor the one being flushed: the trainer never waits for the disk."""
    release, started = threading.Event(), threading.Event()
    flushed = []

    def slow_write(record, raw, config, rank, job_id, stop=None):
        started.set()
        assert release.wait(30)
        flushed.append(record["step"])

    monkeypatch.setattr(persist, "write_checkpoint", slow_write)
    before = segments()
    state = _ManagerState("job", "token", PersistConfig(str(tmp_path), every=1))
    try:
        def snapshot(step):
            t0 = time.monotonic()
            slot = state.begin("0", 64)["slot"]
            assert time.monotonic() - t0 < 1.0
            state.publish("0", {"slot": slot, "step": step, "size": 64})
            return slot

        assert snapshot(0) == 0
        assert started.wait(30)  # the flush of step 0 holds slot 0
        assert snapshot(1) == 1
        assert snapshot(2) == 2  # slot 0 is pinned, slot 1 published: a third slot
        assert state.ranks["0"].pinned == {0}
        release.set()
        deadline = time.monotonic() + 30
        while state.persisted("0")["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert flushed == [0, 2]  # the due flush took the newest snapshot
        assert state.ranks["0"].pinned == set()
        assert snapshot(3) == 0  # the oldest whole snapshot's slot is reused, no fourth slot
        assert len(state.ranks["0"].paths) == 3
    finally:
        release.set()
        state.cleanup()
    assert segments() == before


def test_a_corrupted_snapshot_is_never_persisted(managed, tmp_path):
    h = managed()
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    _train(m, o, snap, [0])
    assert wait_flushed(c, 0) == [0]

    def flip(buf):  # after the checksums were computed, before publication
        buf[0] ^= 1

    snap._before_publish = flip
    _train(m, o, snap, [1])
    snap.close()
    assert wait_flushed(c, 0) == [0]
    assert "fails its checksum" in c.request("persisted", rank=0)["flush_error"]
    assert not [f for f in os.listdir(tmp_path / "ckpt" / "rank0") if f.endswith(".tmp")]
    c.close()


def test_checksum_failure_without_redundancy_falls_back_loudly(managed, caplog):
    """Both in-memory snapshots (steps 4 and 3) corrupted, no parity: the newest persistent
    checkpoint (step 3) is restored, with an error log line and a warning naming the lost step 4."""
    h = managed(persist_every=2)
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    states = _train_flushed(m, o, snap, c, range(5), 2)
    snap.close()
    assert wait_flushed(c, 0) == [3, 1]
    held = c.request("complete", rank=0)["snapshots"]
    # [4, 3], or [4, 3, 2] when a flush held a slot while the trainer needed one (a third slot)
    assert [r["step"] for r in held][:2] == [4, 3]
    for record in held:  # every in-memory snapshot corrupted
        with open(record["path"], "r+b") as f:
            f.seek(record["layout"][2]["offset"])
            f.write(b"\xff\xff")
    m2, o2 = _tiny()
    with caplog.at_level(logging.ERROR, logger="osmos.ft"), \
            pytest.warns(RuntimeWarning, match="snapshot of step 4 is LOST.*persistent checkpoint of step 3"):
        assert restore_or_init(m2, o2, client=c, checkpoint=h.env["OSMOS_FT_PERSIST_DIR"]) == (4, None)
    assert any("step 4 is LOST" in r.getMessage() for r in caplog.records)
    assert_state_equal(m2.state_dict(), states[3]["model"])
    assert_state_equal(o2.state_dict(), states[3]["optimizer"])
    assert 4 not in [r["step"] for r in c.request("complete", rank=0)["snapshots"]]  # step 4 is forgotten
    c.close()


def test_one_corrupted_snapshot_falls_back_to_the_older_in_memory_one(managed):
    h = managed(persist_dir=None)
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    states = _train(m, o, snap, range(3))
    snap.close()
    record = c.request("latest", rank=0)["snapshot"]
    with open(record["path"], "r+b") as f:
        f.write(b"\x00" * 8)
    m2, o2 = _tiny()
    with pytest.warns(RuntimeWarning, match="older in-memory snapshot of step 1"):
        assert restore_or_init(m2, o2, client=c) == (2, None)
    assert_state_equal(m2.state_dict(), states[1]["model"])
    c.close()


def test_node_loss_without_parity_resumes_bitwise_from_the_persistent_checkpoint(managed, tmp_path):
    """A trainer is SIGKILLed and its node's manager (all its shared memory) is lost with it; a
    new manager on the same persist directory; the restarted trainer falls back to the newest
    persistent checkpoint and its losses from there are bitwise equal to an uninterrupted run's."""
    steps, kill_at = 10, 6
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    run_trainer(managed(persist_dir=None), ref, steps, 1)
    h = managed(persist_every=3)
    run_trainer(h, run, steps, 1, kill_at, "after", expect_kill=True)
    c = h.client()
    persisted = wait_flushed(c, 0)
    c.close()
    assert persisted and persisted[0] <= kill_at
    h.end_job()  # the node is gone
    new = managed(persist_every=3)
    p = run_trainer(new, run, steps, 1)
    base = persisted[0]
    assert f"falling back to the persistent checkpoint of step {base}" in p.stderr
    assert "in-memory snapshots are lost" in p.stderr
    resumed = losses(run / "losses.txt")[kill_at + 1:]
    assert [s for s, _ in resumed] == list(range(base + 1, steps))
    assert resumed == losses(ref / "losses.txt")[base + 1:]


def test_nothing_to_fall_back_to_raises_naming_the_lost_step(managed, tmp_path):
    h = managed(persist_dir=None)
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    _train(m, o, snap, [0])
    snap.close()
    record = c.request("latest", rank=0)["snapshot"]
    with open(record["path"], "r+b") as f:
        f.write(b"\x00" * 8)
    with pytest.raises(SnapshotCorrupted, match="no persistent checkpoint") as info:
        restore_or_init(*_tiny(), client=c, checkpoint=str(tmp_path / "empty"))
    assert info.value.step == 0
    assert list_checkpoints(str(tmp_path / "empty"), 0) == []
    c.close()


def test_persist_config_is_validated(tmp_path):
    for bad in ({"every": 0}, {"keep": 0}, {"every": 1.5}):
        with pytest.raises(ValueError, match="must be a positive int"):
            PersistConfig(str(tmp_path), **bad)
    with pytest.raises(ValueError, match="every"):
        start_manager(job_id="bad", persist_dir=str(tmp_path), persist_every=0)


def test_read_snapshot_and_persisted_checkpoint_agree(managed, tmp_path):
    h = managed()
    c = h.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c, extra_state=lambda: {"seen": [1, 2]})
    _train(m, o, snap, [0])
    snap.close()
    assert wait_flushed(c, 0) == [0]
    assert_state_equal(read_checkpoint(str(tmp_path / "ckpt"), 0, 0),
                       read_snapshot(c.request("latest", rank=0)["snapshot"]))
    c.close()
