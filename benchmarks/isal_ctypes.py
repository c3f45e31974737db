"""ISA-L's erasure code through ctypes, from the libisal that ships inside the pyeclib wheel
(site-packages/pyeclib.libs/libisal-pyeclib.so.*). Used as the baseline of bench_ec.py and as
the parity oracle of tests/ft/test_ec.py."""

from __future__ import annotations

import ctypes
import glob
import os
import site
import sys
import sysconfig

_BYTES_P = ctypes.POINTER(ctypes.c_ubyte)


def find_libisal() -> str | None:
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    # then sys.path (a --target install on PYTHONPATH, say)
    for root in [*sorted(roots), *(p for p in sys.path if p and p not in roots)]:
        for pattern in ("pyeclib.libs/libisal*.so*", "pyeclib*.libs/libisal*.so*", ".libs/libisal*.so*"):
            hits = sorted(glob.glob(os.path.join(root, pattern)))
            if hits:
                return hits[0]
    return None


class IsalCodec:
    """RS(k, m) with ISA-L: gf_gen_cauchy1_matrix, ec_init_tables, ec_encode_data."""

    def __init__(self, k: int, m: int, path: str | None = None):
        path = path or find_libisal()
        if path is None:
            raise OSError("libisal not found (pip install pyeclib)")
        self.lib = ctypes.CDLL(path)
        self.k, self.m = k, m
        matrix = (ctypes.c_ubyte * ((k + m) * k))()
        self.lib.gf_gen_cauchy1_matrix(matrix, k + m, k)
        self.matrix = bytes(matrix)
        self.encode_tables = self.tables(self.matrix[k * k :], m)

    def tables(self, rows: bytes, count: int):
        """ec_init_tables of `count` matrix rows (count x k bytes)."""
        out = (ctypes.c_ubyte * (32 * self.k * max(count, 1)))()
        self.lib.ec_init_tables(self.k, count, (ctypes.c_ubyte * len(rows)).from_buffer_copy(rows), out)
        return out

    @staticmethod
    def pointers(addresses: list[int]):
        return (_BYTES_P * len(addresses))(*[ctypes.cast(a, _BYTES_P) for a in addresses])

    def run(self, length: int, count: int, tables, src_pointers, dst_pointers) -> None:
        """ec_encode_data: dst[r] = rows(tables) x src over `length` bytes."""
        self.lib.ec_encode_data(length, self.k, count, tables, src_pointers, dst_pointers)
