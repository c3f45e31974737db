"""Triton kernels of osmos, shipped inside the package as osmos.triton_kernels.

Import these only where triton is installed. On the CPU they run under TRITON_INTERPRET=1
(set before the first import), which torch.library.wrap_triton rejects, so wrappers call the
kernels directly when interpreting.
"""
