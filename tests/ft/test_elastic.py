"""torchrun elastic restart: a worker SIGKILLs itself mid-run, torchrun restarts the worker group,
the new workers reattach to the node's manager, restore (every rank the same step) and continue;
their losses are bitwise equal to an uninterrupted run's. Bounded in time; no process or /dev/shm
segment is left behind."""

import os
import signal
import subprocess
import sys

import pytest
from _helpers import HERE, PYROOT, losses, segments
from osmos.ft.manager import start_manager

WORKER = os.path.join(HERE, "_elastic_trainer.py")


def _torchrun(handle, out, steps, kill_at, optimizer, timeout=300):
    # torchrun's c10d rendezvous shares its TCPStore with the workers' init_process_group; after a
    # restart the new workers can read the killed ones' gloo addresses from it (pytorch#135712):
    # give the workers their own store
    env = dict(os.environ, **handle.env, PYTHONPATH=PYROOT, TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
               OSMOS_TEST_OPTIMIZER=optimizer)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.5", WORKER, str(steps), str(kill_at), str(out)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        log, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    assert p.returncode == 0, log[-4000:]
    return log


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["AdamW", "SnapshotAdamW"])  # copying / zero-copy snapshots
def test_torchrun_restart_reattaches_and_resumes_bitwise(tmp_path, optimizer):
    steps, kill_at = 8, 4
    before = segments()
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir(), run.mkdir()
    handles = [start_manager(job_id=f"elastic-{os.getpid()}-{i}") for i in range(2)]
    try:
        _torchrun(handles[0], ref, steps, -1, optimizer)
        _torchrun(handles[1], run, steps, kill_at, optimizer)
    finally:
        for h in handles:
            h.end_job()
    for rank in (0, 1):
        assert (run / f"start_a0_r{rank}").read_text() == "0"
        assert (run / f"start_a1_r{rank}").read_text() == str(kill_at + 1)  # restored, not restarted
        assert losses(run / f"losses_r{rank}.txt") == losses(ref / f"losses_r{rank}.txt")
        assert [s for s, _ in losses(run / f"losses_r{rank}.txt")] == list(range(steps))
    pids = [int((d / f"pid_a{a}_r{r}").read_text()) for d, attempts in ((ref, (0,)), (run, (0, 1)))
            for a in attempts for r in (0, 1)]
    assert not [p for p in pids if _alive(p)], "worker processes left behind"
    assert not [h.pid for h in handles if _alive(h.pid)], "manager left behind"
    assert segments() == before, "shared-memory segments left behind"
