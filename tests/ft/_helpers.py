"""Helpers shared by the fault-injection tests (imported by tests/ft/test_*.py)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import osmos
import pytest
import torch
from osmos.ft.manager import SEGMENT_PREFIX, SHM_DIR, start_manager

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINER = os.path.join(HERE, "_trainer.py")
# the child processes import the same osmos as the test process (the installed package in CI, the
# source tree with its in-place build in development)
PYROOT = os.path.dirname(os.path.dirname(os.path.abspath(osmos.__file__)))


def segments():
    """The osmos snapshot segments in /dev/shm (to check that a test leaves none behind)."""
    return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(SEGMENT_PREFIX))


@pytest.fixture
def manager():
    """A snapshot manager for one test (import it into the test module); afterwards: stopped, no
    segment or socket left behind."""
    before = segments()
    h = start_manager(job_id=f"test-{os.getpid()}")
    yield h
    h.end_job()
    assert h.proc.poll() is not None, "manager still running"
    assert segments() == before, "shared-memory segments left behind"
    assert not os.path.exists(os.path.dirname(h.socket_path))


def run_trainer(handle, out, *args, rank=0, expect_kill=False, optimizer="AdamW"):
    """Run tests/ft/_trainer.py against ``handle``'s manager in ``out``; the CompletedProcess.
    optimizer: "AdamW" (torch's, copying snapshots) or "SnapshotAdamW" (zero-copy snapshots)."""
    env = dict(os.environ, **handle.env, RANK=str(rank), PYTHONPATH=PYROOT, OSMOS_TEST_OPTIMIZER=optimizer)
    p = subprocess.run([sys.executable, TRAINER, *map(str, args)], env=env, cwd=out, timeout=120,
                       capture_output=True, text=True)
    if expect_kill:
        assert p.returncode == -signal.SIGKILL, p.stderr
    else:
        assert p.returncode == 0, p.stderr
    return p


def losses(path):
    """[(step, loss.hex())] written by a trainer, in file order."""
    with open(path) as f:
        return [(int(s), v) for s, v in (line.split() for line in f)]


def assert_state_equal(a, b):
    """Bitwise equality of nested state (tensors: dtype, shape and every bit)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    else:
        assert a == b


def wait_flushed(client, rank, timeout=60.0):
    """Wait until the manager has no flush pending for ``rank``; its persisted steps, newest first."""
    deadline = time.monotonic() + timeout
    while True:
        st = client.request("persisted", rank=rank)
        if not st["pending"]:
            return st["persisted"]
        assert time.monotonic() < deadline, f"flush of rank {rank} still pending after {timeout} s"
        time.sleep(0.05)
