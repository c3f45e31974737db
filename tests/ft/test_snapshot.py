"""Fault injection for osmos.ft snapshots: SIGKILLed trainers, half-written and corrupted snapshots,
foreign tokens. Every test is bounded in time and leaves no process or /dev/shm segment behind."""

import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from _helpers import assert_state_equal as _assert_state_equal
from _helpers import losses as _losses
from _helpers import run_trainer as _run
from _helpers import PYROOT
from _helpers import manager  # noqa: F401 - the fixture
from osmos.ft.manager import ManagerClient, start_manager
from osmos.ft.restore import (
    SnapshotCorrupted,
    read_snapshot,
    restore_or_init,
    save_checkpoint,
)
from osmos.ft.snapshot import Snapshotter


@pytest.mark.parametrize("optimizer", ["AdamW", "SnapshotAdamW"])
@pytest.mark.parametrize("mode,every", [("after", 1), ("during", 2)])
def test_sigkill_restart_resumes_bitwise(manager, tmp_path, mode, every, optimizer):
    steps = 12
    kill_at = random.Random().randrange(2, steps - 2) // every * every  # a snapshot step
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    _run(manager, ref, steps, every, rank=1, optimizer=optimizer)  # uninterrupted reference, own slot pair
    _run(manager, run, steps, every, kill_at, mode, expect_kill=True, optimizer=optimizer)
    c = manager.client()
    record = c.request("latest", rank=0)["snapshot"]
    expected = kill_at if mode == "after" else kill_at - every  # a half-written one is never published
    assert record["step"] == expected
    published = read_snapshot(record)
    _run(manager, run, steps, every, optimizer=optimizer)
    restored = torch.load(run / "restored.pt", weights_only=False)
    _assert_state_equal(restored["model"], published["model"])
    _assert_state_equal(restored["optimizer"], published["optimizer"])
    assert torch.equal(restored["rng"], published["rng"]["torch"])
    losses = _losses(run / "losses.txt")
    resumed = [l for l in losses[kill_at + 1:]]
    assert [s for s, _ in resumed] == list(range(expected + 1, steps))
    assert resumed == _losses(ref / "losses.txt")[expected + 1:]
    c.close()


def _tiny():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 4)
    o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    return m, o


def _train_step(m, o):
    o.zero_grad()
    m(torch.randn(2, 4)).sum().backward()
    o.step()


def test_no_snapshot_returns_zero_and_leaves_model(manager):
    m, o = _tiny()
    w = m.weight.clone()
    assert restore_or_init(m, o, client=manager.client()) == (0, None)
    assert torch.equal(m.weight, w)


def test_half_written_snapshot_is_never_published(manager):
    c = manager.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    _train_step(m, o)
    snap.step(0, block=True)
    good = {k: v.clone() for k, v in m.state_dict().items()}

    def die(buf):
        raise KeyboardInterrupt("simulated crash mid-copy")

    snap._before_publish = die
    _train_step(m, o)
    snap.step(1)
    with pytest.raises(RuntimeError, match="snapshot failed"):
        snap.wait()
    snap._before_publish = None
    assert c.request("latest", rank=0)["snapshot"]["step"] == 0
    m2, o2 = _tiny()
    assert restore_or_init(m2, o2, client=c)[0] == 1
    _assert_state_equal(m2.state_dict(), good)
    # the failed write did not take the published slot: the next snapshot still alternates safely
    _train_step(m, o)
    snap.step(2, block=True)
    assert c.request("latest", rank=0)["snapshot"]["step"] == 2
    snap.close()


def test_corrupted_shard_detected_and_checkpoint_fallback(manager, tmp_path):
    c = manager.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    _train_step(m, o)
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, m, o, step=0)
    snap.step(0, block=True)
    snap.close()
    record = c.request("latest", rank=0)["snapshot"]
    entry = record["layout"][1]
    with open(record["path"], "r+b") as f:
        f.seek(entry["offset"])
        b = f.read(1)
        f.seek(entry["offset"])
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(SnapshotCorrupted, match="shard 1"):
        restore_or_init(*_tiny(), client=c)
    m2, o2 = _tiny()
    with pytest.warns(RuntimeWarning, match="persistent checkpoint"):
        assert restore_or_init(m2, o2, client=c, checkpoint=ckpt)[0] == 1
    _assert_state_equal(m2.state_dict(), m.state_dict())


def test_other_jobs_token_is_refused(manager):
    other = start_manager(job_id="other-job")
    try:
        bad = ManagerClient(manager.job_id, other.token, manager.socket_path)
        with pytest.raises(PermissionError):
            bad.request("latest", rank=0)
        bad.close()
        wrong_job = ManagerClient(other.job_id, manager.token, manager.socket_path)
        with pytest.raises(PermissionError):
            wrong_job.request("ping")
        wrong_job.close()
    finally:
        other.end_job()
    assert oct(os.stat(os.path.dirname(manager.socket_path)).st_mode & 0o777) == "0o700"


def test_segments_are_private_and_removed(manager):
    c = manager.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    snap.step(0, block=True)
    snap.close()
    path = c.request("latest", rank=0)["snapshot"]["path"]
    assert os.stat(path).st_mode & 0o777 == 0o600
    manager.proc.send_signal(signal.SIGTERM)
    manager.proc.wait(10)
    assert not os.path.exists(path)


def _cpu_state(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


@pytest.mark.gpu
def test_cuda_snapshot_stages_through_pinned_memory_and_restores_bitwise(manager):
    """CUDA parameters and optimizer state go through pinned staging on a side stream; the
    snapshot of step 2 holds step-2 values although step 3 rewrites the parameters meanwhile."""
    c = manager.client()

    def build():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4)).cuda()
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    m, o = build()
    snap = Snapshotter(m, o, client=c)
    x = torch.randn(64, 256, device="cuda")
    for step in range(4):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
        if step == 2:
            expected = _cpu_state({"model": m.state_dict(), "optimizer": o.state_dict()})
        if step <= 2:
            snap.step(step)
    snap.close()
    assert not torch.equal(m[0].weight.cpu(), expected["model"]["0.weight"])  # step 3 moved on
    m2, o2 = build()
    assert restore_or_init(m2, o2, client=c) == (3, None)
    _assert_state_equal(_cpu_state(m2.state_dict()), expected["model"])
    _assert_state_equal(_cpu_state(o2.state_dict()), expected["optimizer"])
    assert m2[0].weight.is_cuda


def test_slot_keys_are_validated():
    from osmos.ft.manager import slot_key

    assert slot_key(3) == "3" and slot_key("parity_s0_p1") == "parity_s0_p1"
    for bad in ("../etc", "", -1, True, "a" * 65, 1.5):
        with pytest.raises(ValueError, match="rank must be"):
            slot_key(bad)


def test_both_whole_snapshots_are_kept_and_keep_until_rolls_back(manager):
    c = manager.client()
    m, o = _tiny()
    snap = Snapshotter(m, o, client=c)
    for step in (0, 1):
        _train_step(m, o)
        snap.step(step, block=True)
    assert [r["step"] for r in c.request("complete", rank=0)["snapshots"]] == [1, 0]
    c.request("keep_until", rank=0, step=0)  # a recovery chose step 0 for the whole job
    assert c.request("latest", rank=0)["snapshot"]["step"] == 0
    kept_slot = c.request("latest", rank=0)["snapshot"]["slot"]
    assert c.request("begin", rank=0, nbytes=8)["slot"] != kept_slot  # the kept one is not rewritten
    assert [r["step"] for r in c.request("complete", rank=0)["snapshots"]] == [0]
    snap.close()


def test_exiting_right_after_a_step_still_publishes_the_snapshot(manager):
    """The copy runs on a daemon thread; a trainer returning right after its last step() must not
    lose that snapshot (without the exit hook it was not published: 128 and 768 MiB models)."""
    script = os.path.join(os.path.dirname(__file__), "_exit_after_step.py")
    env = dict(os.environ, **manager.env, RANK="5", PYTHONPATH=PYROOT)
    p = subprocess.run([sys.executable, script, "8"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    c = manager.client()
    snapshot = c.request("latest", rank=5)["snapshot"]
    c.close()
    assert snapshot is not None and snapshot["step"] == 0
