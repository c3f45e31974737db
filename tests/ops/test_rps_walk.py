"""The CUDA gather / scatter's warp-chunk walk of the RPS mapping (csrc/include/osmos/rps_walk.h)
gives rps::index and rps::sign for every element: rps_walk_check.cpp compiled with the host C++
compiler and run on the CPU (the CUDA kernels themselves are compared with the CPU ones in
test_rps_gather.py::test_gpu_matches_cpu when a GPU is present)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CXX = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


@pytest.mark.skipif(CXX is None or not (ROOT / "csrc").is_dir(), reason="needs a C++ compiler and the source tree")
def test_warp_chunk_walk_matches_the_mapping(tmp_path):
    exe = tmp_path / "rps_walk_check"
    build = subprocess.run([CXX, "-std=c++17", "-O2", "-I", str(ROOT / "csrc" / "include"),
                            str(Path(__file__).with_name("rps_walk_check.cpp")), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert ", 0 mismatches" in run.stdout
