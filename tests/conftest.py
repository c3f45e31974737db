import os

import pytest
import torch

# Every test runs with the Hugging Face hub switched off: loading (the zoo's text encoder and
# models) must never download. (One conftest for the suite: a second one, in tests/zoo, shadowed
# this module's helpers as `conftest` when a command line listed both folders.)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def triton_available() -> bool:
    """Triton kernels can run: a recent enough triton, and a GPU or the interpreter on the CPU."""
    from osmos import _native

    return _native.triton_status()[0]


def load_isal():
    """benchmarks/isal_ctypes.py (ISA-L through ctypes), or skip when libisal is not installed."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "isal_ctypes.py"
    spec = importlib.util.spec_from_file_location("isal_ctypes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_libisal() is None:
        pytest.skip("libisal (pyeclib wheel) not installed")
    return module
