"""Loads the native modules. Never raises: a missing piece is recorded with the reason."""

from __future__ import annotations

import importlib
from types import ModuleType

# torch first: osmos._C may run its threads on OpenMP, and with torch loaded first the dynamic
# loader resolves _C's libgomp.so.1 to the copy torch ships, one OpenMP runtime for both.
import torch  # noqa: F401


def _load(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(name), ""
    except ImportError as exc:  # not built, or built for another platform
        return None, f"{name} could not be imported: {exc}"
    except Exception as exc:  # a broken build must not break `import osmos`
        return None, f"{name} failed to load: {type(exc).__name__}: {exc}"


C, C_ERROR = _load("osmos._C")
CUDA, CUDA_ERROR = _load("osmos._cuda")


def cuda_devices() -> tuple[int, str]:
    """(devices visible to osmos._cuda, reason when there are none)."""
    if CUDA is None:
        return 0, CUDA_ERROR or "osmos._cuda is not built"
    return CUDA.device_count()


def has_cpu_kernel(name: str) -> bool:
    return C is not None and hasattr(C, name)


def has_cuda_kernel(name: str) -> bool:
    return CUDA is not None and hasattr(CUDA, name)


# Oldest Triton the kernels are tested with (older interpreters lack e.g. tl.histogram's mask).
MIN_TRITON = (3, 7)


def triton_status() -> tuple[bool, str]:
    """(Triton importable with a usable backend, reason when not)."""
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return False, f"triton is not installed ({type(exc).__name__}); pip install osmos[triton]"
    import os

    version = tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRITON and os.environ.get("OSMOS_ALLOW_OLD_TRITON") != "1":
        return False, (f"triton {triton.__version__} is older than {'.'.join(map(str, MIN_TRITON))}, "
                       "which osmos's Triton kernels are tested with; ops use their CUDA or torch paths "
                       "(OSMOS_ALLOW_OLD_TRITON=1 tries them anyway)")
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "interpreter (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"
    return False, f"triton {triton.__version__} installed, but no GPU (set TRITON_INTERPRET=1 to run on the CPU)"
