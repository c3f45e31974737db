import json
import shutil
import subprocess
import sys

import osmos
from osmos import _native


def test_cpu_module_is_built_and_reports_isa():
    assert _native.C is not None, _native.C_ERROR
    assert _native.C.cpu_isa() in ("scalar", "avx2", "avx512")
    assert _native.C.detected_isa() in ("scalar", "avx2", "avx512")


def test_cpu_isa_limit_is_applied_and_validated():
    before = _native.C.cpu_isa()
    try:
        _native.C.set_cpu_isa("scalar")
        assert _native.C.cpu_isa() == "scalar"
    finally:
        _native.C.set_cpu_isa("avx512")
    assert _native.C.cpu_isa() == before
    try:
        _native.C.set_cpu_isa("sse9")
    except ValueError as exc:
        assert "sse9" in str(exc)
    else:
        raise AssertionError("an unknown ISA name was accepted")


def test_cuda_module_built_when_nvcc_present_and_explains_missing_gpu():
    from osmos.info import backends

    b = backends()
    if shutil.which("nvcc"):
        assert b["cuda"]["built"], b["cuda"]["reason"]
        if not b["cuda"]["usable"]:
            assert b["cuda"]["reason"], "no reason given for an unusable CUDA backend"
    else:
        assert b["cuda"]["built"] or b["cuda"]["reason"]


def test_info_command_reports_backends():
    out = subprocess.run([sys.executable, "-m", "osmos", "info"], capture_output=True, text=True, check=True).stdout
    assert "CPU     osmos._C built" in out
    assert "CUDA" in out and "Triton" in out
    data = json.loads(
        subprocess.run([sys.executable, "-m", "osmos", "info", "--json"], capture_output=True, text=True, check=True).stdout
    )
    assert data["osmos"] == osmos.__version__
    assert data["cpu"]["built"] is True
