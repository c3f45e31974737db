"""What osmos was built with and what it can use on this machine."""

from __future__ import annotations

import platform

import torch

from osmos import _native


def backends() -> dict:
    """Machine-readable status of every backend."""
    import osmos

    cpu = {"built": _native.C is not None, "reason": _native.C_ERROR}
    if _native.C is not None:
        cpu.update(
            isa=_native.C.cpu_isa(),
            detected_isa=_native.C.detected_isa(),
            features=[k for k, v in _native.C.cpu_features().items() if v],
            hot_paths=list(_native.C.hot_paths),
            threads=torch.get_num_threads(),
            pool=_native.C.cpu_pool_info()["kind"],
        )
    cuda = {"built": _native.CUDA is not None, "reason": _native.CUDA_ERROR or ""}
    if _native.CUDA is not None:
        n, why = _native.cuda_devices()
        cuda.update(
            archs=_native.CUDA.archs,
            runtime=_native.CUDA.cuda_runtime_version,
            devices=n,
            hot_paths=list(_native.CUDA.hot_paths),
            usable=n > 0,
            reason=why if n == 0 else "",
        )
    else:
        cuda.update(usable=False)
        if not cuda["reason"]:
            cuda["reason"] = "osmos._cuda is not built (no CUDA compiler at build time, or OSMOS_CUDA=OFF)"
    triton_ok, triton_why = _native.triton_status()
    return {
        "osmos": osmos.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cuda": cuda,
        "triton": {"usable": triton_ok, "reason": triton_why},
    }


def info(file=None) -> str:
    """Print (and return) a human-readable report of versions and backends."""
    b = backends()
    lines = [f"osmos {b['osmos']}  torch {b['torch']}  python {b['python']}"]
    cpu = b["cpu"]
    if cpu["built"]:
        lines.append(
            f"CPU     osmos._C built; ISA path {cpu['isa']} (CPU supports {cpu['detected_isa']}); "
            f"{cpu['threads']} threads on {'OpenMP (shared with torch)' if cpu['pool'] == 'openmp' else 'own pool'}; kernels: {', '.join(cpu['hot_paths']) or 'none'}"
        )
    else:
        lines.append(f"CPU     osmos._C NOT available: {cpu['reason']} (ops fall back to pure-torch references)")
    cuda = b["cuda"]
    if cuda["built"]:
        state = f"{cuda['devices']} GPU(s) usable" if cuda["usable"] else f"built, but no GPU usable here: {cuda['reason']}"
        lines.append(
            f"CUDA    osmos._cuda built for sm_{cuda['archs'].replace(',', ', sm_')} (CUDA runtime {cuda['runtime']}); {state}"
        )
    else:
        lines.append(f"CUDA    not built: {cuda['reason']}")
    t = b["triton"]
    lines.append(f"Triton  {'usable: ' if t['usable'] else 'not usable: '}{t['reason']}")
    text = "\n".join(lines)
    print(text, file=file)
    return text
