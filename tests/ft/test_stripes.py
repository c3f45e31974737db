"""Cross-node protection: stripe placement, and whole-node losses simulated with one process and
one manager per "node" (gloo on loopback). A lost node's manager is ended (its shared memory is
gone) and a fresh one started; every rank restarts and restores. The restored state must be
bitwise equal to what the rank held at the restored step, on every rank."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from _helpers import HERE, PYROOT, wait_flushed
from _helpers import assert_state_equal as _assert_equal
from _helpers import segments as _segments
from osmos.ft.manager import start_manager
from osmos.ft.stripes import StripePlan

NODE = os.path.join(HERE, "_stripe_node.py")


def test_plan_places_parity_outside_the_stripe_and_survives_m_node_losses():
    plan = StripePlan(world_size=12, k=3, m=2, ranks_per_node=2)  # 6 nodes
    assert len(plan.stripes) == 4
    for stripe in plan.stripes:
        data_nodes = {plan.node_of(r) for r in stripe.data}
        parity_nodes = {plan.node_of(r) for r in stripe.parity}
        assert len(data_nodes) == len(stripe.data) and len(parity_nodes) == plan.m
        assert not data_nodes & parity_nodes
        assert len({r % 2 for r in stripe.data + stripe.parity}) == 1  # one local rank per stripe
    assert sorted(r for s in plan.stripes for r in s.data) == list(range(12))  # every rank protected once
    uneven = StripePlan(world_size=5, k=2)  # default m = 1; groups [0,1] [2,3] [4]
    assert [s.data for s in uneven.stripes] == [(0, 1), (2, 3), (4,)]
    assert [s.parity for s in uneven.stripes] == [(2,), (4,), (0,)]
    assert StripePlan(world_size=8).k == 4


def test_plan_rejects_bad_configurations():
    with pytest.raises(ValueError, match="k \\+ m"):
        StripePlan(world_size=3, k=3, m=1)
    with pytest.raises(ValueError, match="ranks_per_node"):
        StripePlan(world_size=5, ranks_per_node=2)
    with pytest.raises(ValueError, match="m must be"):
        StripePlan(world_size=4, m=0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(phase, managers, out, k, m, steps, env_extra=None):
    port = _free_port()
    procs = []
    for rank, h in enumerate(managers):
        env = dict(os.environ, **h.env, PYTHONPATH=PYROOT, **(env_extra or {}))
        procs.append(subprocess.Popen([sys.executable, NODE, phase, str(rank), str(len(managers)), str(port),
                                       str(out), str(k), str(m), str(steps)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for p in procs:
            _, err = p.communicate(timeout=400)  # 4 processes starting torch on 2 busy cores
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _corrupt_latest(handle, rank):
    """Flip one bit in the first shard of the rank's published snapshot."""
    c = handle.client()
    record = c.request("latest", rank=rank)["snapshot"]
    c.close()
    with open(record["path"], "r+b") as f:
        f.seek(record["layout"][0]["offset"])
        b = f.read(1)
        f.seek(record["layout"][0]["offset"])
        f.write(bytes([b[0] ^ 0x04]))


# (k, m, nodes lost, ranks whose snapshot is corrupted, last snapshot protected?,
#  step every rank must restore, or None when unrecoverable)
CASES = {
    "k2m1-lose-one": (2, 1, [1], [], True, 2),
    "k3m1-unprotected-last": (3, 1, [2], [], False, 1),  # the newest step has no parity: roll back to 1
    "k2m2-lose-two": (2, 2, [0, 1], [], True, 2),
    "k2m1-lose-two-of-a-stripe": (2, 1, [0, 1], [], True, None),
    "k2m1-corrupted-shard-rebuilt": (2, 1, [], [3], True, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_lost_nodes_are_rebuilt_from_the_stripe(tmp_path, case):
    k, m, lost, corrupt, protected_last, expect = CASES[case]
    world, steps = 4, 3
    before = _segments()
    managers = [start_manager(job_id=f"stripes-{os.getpid()}-{n}") for n in range(world)]
    try:
        _run_all("train", managers, tmp_path, k, m, steps, None if protected_last else {"UNPROTECTED_LAST": "1"})
        for n in lost:  # the node is gone: its manager and all its shared memory
            managers[n].end_job()
            managers[n] = start_manager(job_id=f"stripes-{os.getpid()}-{n}-new")
        for rank in corrupt:
            _corrupt_latest(managers[rank], rank)
        _run_all("restore", managers, tmp_path, k, m, steps)
        for rank in range(world):
            if expect is None:
                assert not (tmp_path / f"restored_r{rank}.pt").exists()
                assert "more than m = 1" in (tmp_path / f"failed_r{rank}.txt").read_text()
                continue
            restored = torch.load(tmp_path / f"restored_r{rank}.pt", weights_only=False)
            assert restored["next_step"] == expect + 1
            held = torch.load(tmp_path / f"r{rank}_s{expect}.pt", weights_only=False)
            _assert_equal(restored["model"], held["model"])
            _assert_equal(restored["optimizer"], held["optimizer"])
            assert restored["extra"] == held["extra"]
    finally:
        for h in managers:
            h.end_job()
    assert _segments() == before


@pytest.mark.slow
def test_more_than_m_lost_falls_back_to_the_persistent_checkpoint_on_every_rank(tmp_path):
    """Two nodes of one k=2, m=1 stripe are lost: parity cannot rebuild them, so every rank falls
    back to the newest persistent checkpoint (flushed by the managers to a directory the lost
    nodes' replacements see too), with a warning naming the lost step, bitwise."""
    world, steps, persist_dir = 4, 3, str(tmp_path / "ckpt")
    before = _segments()

    def start(n, tag=""):
        return start_manager(job_id=f"stripes-p-{os.getpid()}-{n}{tag}", persist_dir=persist_dir)

    managers = [start(n) for n in range(world)]
    try:
        _run_all("train", managers, tmp_path, 2, 1, steps)
        for rank, h in enumerate(managers):
            c = h.client()
            assert wait_flushed(c, rank)[0] == steps - 1  # the last due flush took the newest snapshot
            c.close()
        for n in (0, 1):
            managers[n].end_job()
            managers[n] = start(n, "-new")
        _run_all("restore", managers, tmp_path, 2, 1, steps)
        for rank in range(world):
            restored = torch.load(tmp_path / f"restored_r{rank}.pt", weights_only=False)
            assert restored["next_step"] == steps
            held = torch.load(tmp_path / f"r{rank}_s{steps - 1}.pt", weights_only=False)
            _assert_equal(restored["model"], held["model"])
            _assert_equal(restored["optimizer"], held["optimizer"])
            assert restored["extra"] == held["extra"]
            assert any("more than m = 1" in w and f"persistent checkpoint of step {steps - 1}" in w
                       for w in restored["warnings"]), restored["warnings"]
    finally:
        for h in managers:
            h.end_job()
    assert _segments() == before
