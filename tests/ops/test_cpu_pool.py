"""The CPU thread pools behind osmos::cpu::parallel_chunks (csrc/cpu/parallel.cpp): OpenMP's team
(shared with torch; the default where built) and osmos's own persistent workers: chunking, worker
errors, nested calls, several Python threads at once, fork, interpreter exit, lazy growth and no
CPU burnt while idle. Process-wide behaviours run in a fresh interpreter."""

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import osmos
from osmos import _native

C = _native.C
pytestmark = pytest.mark.skipif(not _native.has_cpu_kernel("_parallel_chunks_probe"), reason="osmos._C not built")
OSMOS_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(osmos.__file__)))  # the osmos these tests import


HAVE_OPENMP = C.cpu_pool_info()["kind"] == "openmp" or C.cpu_pool_info()["openmp"] > 0
KINDS = ["openmp", "threads"] if HAVE_OPENMP else ["threads"]


@pytest.fixture(params=KINDS, autouse=True)
def pool_kind(request):
    """Every in-process test runs on both pools."""
    before = C.cpu_pool_info()["kind"]
    C.set_cpu_pool(request.param)
    yield request.param
    C.set_cpu_pool(before)


def run_fresh(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs code in a new interpreter (the same osmos: in-place build or installed); fails the test on a
    non-zero exit."""
    env = dict(os.environ, PYTHONPATH=OSMOS_ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.mark.parametrize("n,nthreads", [(10, 3), (7, 7), (5, 8), (1000, 4), (2, 2), (100, 2)])
def test_chunks_cover_the_range_in_order(n, nthreads):
    rows = C._parallel_chunks_probe(n, nthreads)
    assert [r[0] for r in rows] == list(range(nthreads))
    assert [(r[1], r[2]) for r in rows] == [(n * t // nthreads, n * (t + 1) // nthreads) for t in range(nthreads)]


@pytest.mark.parametrize("n,nthreads", [(0, 4), (1, 4), (50, 1), (50, 0)])
def test_one_chunk_when_no_parallelism(n, nthreads):
    rows = C._parallel_chunks_probe(n, nthreads)
    assert (rows[0][0], rows[0][1], rows[0][2]) == (0, 0, n)
    assert all(r[0] == -1 for r in rows[1:])  # the other chunks never ran


def test_workers_run_chunks():
    """With chunks long enough for a worker to wake, chunks run on more than one thread (retried:
    on a loaded machine the caller may take every chunk before a worker is scheduled)."""
    for _ in range(10):
        rows = C._parallel_chunks_probe(4, 2, work_us=20000)
        if rows[0][3] != rows[1][3]:
            return
    pytest.fail("chunk 1 always ran on the calling thread")


@pytest.mark.parametrize("bad", [0, 1, 3])
def test_chunk_exception_is_rethrown_on_the_caller(bad):
    with pytest.raises(RuntimeError, match=f"chunk {bad} failed"):
        C._parallel_chunks_probe(40, 4, throw_chunk=bad, work_us=200)
    rows = C._parallel_chunks_probe(40, 4)  # the pool still works afterwards
    assert [(r[1], r[2]) for r in rows] == [(10 * t, 10 * (t + 1)) for t in range(4)]


def test_nested_call_runs_serially_inside_a_chunk():
    before = C.cpu_pool_info()["serial"]
    rows = C._parallel_chunks_probe(30, 3, nested_threads=2, work_us=100)
    assert [r[4] for r in rows] == [10, 10, 10]  # every nested chunk visited its items
    assert C.cpu_pool_info()["serial"] == before + 3


def test_several_python_threads_at_once():
    """Kernels called from 4 Python threads at once (the GIL is released around them) all finish
    with the right results; each call either ran on the pool or, finding it busy, on threads of
    its own."""
    from osmos.ft import copy_with_crc32c, crc32c
    from osmos.ops import rps_gather
    from osmos.ops.rps_gather import reference_rps_gather
    from osmos.ops.rps_mapping import LayerMap

    config = LayerMap("hashednet", 5000, 0, 256, 300, seed=1).config()
    M = torch.randn(5000)
    expected_W = reference_rps_gather(M, config, 256, 300, 0.5)
    blobs = [torch.randint(0, 256, (3 << 20,), dtype=torch.uint8) for _ in range(2)]
    expected_crc = [crc32c(b.numpy()) for b in blobs]
    errors, calls = [], 40
    before = C.cpu_pool_info()

    def worker(i):
        try:
            for j in range(calls):
                if i % 2:
                    rows = C._parallel_chunks_probe(60, 3, work_us=50)
                    assert [(r[1], r[2]) for r in rows] == [(0, 20), (20, 40), (40, 60)]
                elif j % 2:
                    dst = [torch.empty_like(b) for b in blobs]
                    assert copy_with_crc32c(blobs, dst, nthreads=2) == expected_crc
                    assert all(torch.equal(a, b) for a, b in zip(dst, blobs))
                else:
                    threads = torch.get_num_threads()
                    torch.set_num_threads(2)
                    try:
                        assert torch.equal(rps_gather(M, config, 256, 300, 0.5), expected_W)
                    finally:
                        torch.set_num_threads(threads)
        except BaseException as exc:  # reported below with the thread's index
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread is stuck (deadlock?)"
    assert errors == []
    after = C.cpu_pool_info()
    probe_calls = 2 * calls  # threads 1 and 3; the kernels' own calls come on top
    ran = sum(after[key] - before[key] for key in ("jobs", "spawned", "openmp"))
    assert ran >= probe_calls


def test_spin_setting_is_clamped():
    old = C.cpu_pool_info()["spin_us"]
    try:
        C.set_cpu_pool_spin_us(-5)
        assert C.cpu_pool_info()["spin_us"] == 0
        assert [(r[1], r[2]) for r in C._parallel_chunks_probe(9, 3)] == [(0, 3), (3, 6), (6, 9)]
        C.set_cpu_pool_spin_us(10**7)
        assert C.cpu_pool_info()["spin_us"] == 10000
    finally:
        C.set_cpu_pool_spin_us(old)


def test_pool_starts_lazily_and_grows_to_the_largest_request(pool_kind):
    if pool_kind != "threads":
        pytest.skip("osmos's own pool")
    run_fresh("""
        from osmos import _native
        C = _native.C
        C.set_cpu_pool("threads")
        info = C.cpu_pool_info()
        assert info["workers"] == 0 and info["jobs"] == 0, info
        C._parallel_chunks_probe(10, 1)
        assert C.cpu_pool_info()["workers"] == 0
        C._parallel_chunks_probe(10, 3)
        assert C.cpu_pool_info()["workers"] == 2
        C._parallel_chunks_probe(10, 2)
        assert C.cpu_pool_info()["workers"] == 2
        rows = C._parallel_chunks_probe(1000, 64)  # more chunks than the cap: workers share them
        assert [(r[1], r[2]) for r in rows] == [(1000 * t // 64, 1000 * (t + 1) // 64) for t in range(64)]
        info = C.cpu_pool_info()
        assert info["workers"] == info["max_workers"] >= 1, info
        assert info["jobs"] == 3, info
    """)


def test_idle_pool_burns_no_cpu(pool_kind):
    """After a call the workers spin for at most spin_us, then block: a sleeping process with a
    started pool uses almost no CPU time."""
    if pool_kind != "threads":
        pytest.skip("osmos's own pool (OpenMP's idle policy is OMP_WAIT_POLICY's, as for torch)")
    run_fresh("""
        import time
        from osmos import _native
        C = _native.C
        C.set_cpu_pool("threads")
        C.set_cpu_pool_spin_us(10000)  # the longest spin allowed, to make a leak obvious
        C._parallel_chunks_probe(100, 3, work_us=1000)
        assert C.cpu_pool_info()["workers"] == 2
        time.sleep(0.1)
        t0 = time.process_time()
        time.sleep(0.5)
        used = time.process_time() - t0
        assert used < 0.05, f"{used:.3f} s of CPU time while idle"
    """)


# torch's own OpenMP threads hang in a forked child (a libgomp limitation, osmos aside), so these
# scripts keep torch at 1 thread and give the osmos kernel its thread count directly.
FORK_CHILD_CHECK = """
    import os, torch
    from osmos import _native
    from osmos.ops._common import dtype_code
    from osmos.ops.rps_gather import reference_rps_gather
    from osmos.ops.rps_mapping import LayerMap
    C = _native.C
    torch.set_num_threads(1)
    config = LayerMap("stable", 4000, 0, 200, 300, seed=2).config()
    M = torch.randn(4000)
    expected = reference_rps_gather(M, config, 200, 300, 0.25)

    def check():
        W = torch.empty(200, 300)
        C.rps_gather(M.data_ptr(), W.data_ptr(), dtype_code(M), config, 200, 300, 0.25, 2)
        assert torch.equal(W, expected)
        rows = C._parallel_chunks_probe(30, 3, work_us=500)
        assert [(r[1], r[2]) for r in rows] == [(0, 10), (10, 20), (20, 30)]
"""


def test_forked_child_runs_on_a_fresh_own_pool(pool_kind):
    """A forked child never uses the parent's workers (their threads do not exist there; GNU
    OpenMP's team does not survive fork()): it runs kernels on a fresh own pool, and gets them right.
    The parent's pool is untouched."""
    run_fresh(FORK_CHILD_CHECK + f"""
    C.set_cpu_pool("{pool_kind}")
    check()
    info = C.cpu_pool_info()
    assert info["workers"] == 2 if "{pool_kind}" == "threads" else info["openmp"] >= 2, info
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert C.cpu_pool_info()["kind"] == "threads"
            assert C.cpu_pool_info()["workers"] == 0
            check()
            assert C.cpu_pool_info()["workers"] == 2
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    check()
    assert C.cpu_pool_info()["kind"] == "{pool_kind}"
    """)


def test_multiprocessing_fork_children_run_kernels():
    run_fresh(FORK_CHILD_CHECK + """
    import multiprocessing as mp

    def child():
        check()

    check()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=child) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    """)


def test_interpreter_exit_with_a_started_pool():
    proc = run_fresh("""
        from osmos import _native
        _native.C._parallel_chunks_probe(100, 4, work_us=100)
        print("done")
    """, timeout=60)
    assert proc.stdout.strip() == "done"


def test_interpreter_exit_right_after_a_thread_ran_kernels():
    """The main thread finishes while another (non-daemon) thread still calls kernels; the
    interpreter waits for it, then the pool's workers (just active, maybe spinning) are stopped.
    (A daemon thread inside any GIL-releasing binding at exit aborts in pybind11 on Python < 3.14,
    pool or not, so that case is not tested here.)"""
    proc = run_fresh("""
        import threading
        from osmos import _native
        C = _native.C
        started = threading.Event()

        def loop():
            for _ in range(50):
                C._parallel_chunks_probe(100, 3, work_us=2000)
                started.set()

        threading.Thread(target=loop).start()
        started.wait(30)
        print("exiting")
    """, timeout=60)
    assert proc.stdout.strip() == "exiting"


@pytest.mark.skipif(not HAVE_OPENMP, reason="osmos._C built without OpenMP")
def test_openmp_team_is_torchs_and_runs_chunks_in_parallel(pool_kind):
    """By default chunks run on OpenMP's team, and after `import torch` that is torch's libgomp:
    one OpenMP runtime in the process, so osmos and torch share their workers."""
    if pool_kind != "openmp":
        pytest.skip("one run, in a fresh process")
    run_fresh("""
        import torch
        from osmos import _native
        C = _native.C
        assert C.cpu_pool_info()["kind"] == "openmp"
        for _ in range(10):
            rows = C._parallel_chunks_probe(4, 2, work_us=20000)
            if rows[0][3] != rows[1][3]:
                break
        else:
            raise AssertionError("chunk 1 always ran on the calling thread")
        info = C.cpu_pool_info()
        assert info["openmp"] >= 1 and info["jobs"] == 0 and info["workers"] == 0, info
        runtimes = {line.split()[-1] for line in open("/proc/self/maps") if "libgomp" in line}
        assert len(runtimes) == 1, runtimes
    """)


def test_background_threads_use_the_own_pool(pool_kind):
    """OpenMP serves the main thread only; a call from another thread runs on the own pool (a
    team of its own would spin beside the main thread's work)."""
    before = C.cpu_pool_info()
    out = []
    worker = threading.Thread(target=lambda: out.append(C._parallel_chunks_probe(30, 3, work_us=100)))
    worker.start()
    worker.join(60)
    after = C.cpu_pool_info()
    assert [(r[1], r[2]) for r in out[0]] == [(0, 10), (10, 20), (20, 30)]
    assert after["openmp"] == before["openmp"]
    assert (after["jobs"] - before["jobs"]) + (after["spawned"] - before["spawned"]) == 1


def test_unknown_pool_kind_is_refused():
    with pytest.raises(ValueError, match="'openmp'"):
        C.set_cpu_pool("tbb")
