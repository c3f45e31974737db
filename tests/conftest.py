import pytest
import torch


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
