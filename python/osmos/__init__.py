"""osmos: native PyTorch kernels and tools for concept erasure, diffusion acceleration,
communication and model compression, in-memory fault tolerance, and replication detection."""

__version__ = "0.1.0"

from osmos import ops  # noqa: E402  (registers the torch.library ops)
from osmos.info import info  # noqa: E402

__all__ = ["ops", "info", "__version__"]
