"""CRC-32C kernels (scalar, AVX2, AVX-512) against the bit-by-bit definition, fused copies,
threads splitting a buffer, and bad inputs."""

import numpy as np
import pytest
import torch

from osmos import _native
from osmos.ft.checksum import copy_with_crc32c, crc32c, reference_crc32c

C = _native.C
ISAS = [i for i in ("scalar", "avx2", "avx512") if ["scalar", "avx2", "avx512"].index(i)
        <= ["scalar", "avx2", "avx512"].index(C.detected_isa())]
if C.cpu_features()["vpclmulqdq"] and "avx512" in ISAS:
    ISAS.append("avx512-no-vpclmul")  # "avx512" folds with VPCLMULQDQ here; this is the crc32 kernel
STRIDE_BLOCK = 3 * 4096  # one interleaved block of the hardware kernels


def set_isa(name: str) -> None:
    """An entry of ISAS: the ISA limit, and "-no-vpclmul" forbids the carry-less-multiply kernels."""
    C.set_cpu_isa(name.removesuffix("-no-vpclmul"))
    C.set_cpu_vpclmul(not name.endswith("-no-vpclmul"))


@pytest.fixture(params=ISAS)
def isa(request):
    before = C.cpu_isa()
    set_isa(request.param)
    yield request.param
    C.set_cpu_isa(before)
    C.set_cpu_vpclmul(True)


def test_vpclmul_kernel_runs_where_the_cpu_has_it(isa):
    assert C.cpu_uses_vpclmul() == (isa == "avx512" and C.cpu_features()["vpclmulqdq"])


def test_reference_matches_known_vectors():
    assert reference_crc32c(b"123456789") == 0xE3069283
    assert reference_crc32c(b"") == 0
    assert reference_crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert reference_crc32c(b"\xff" * 32) == 0x62A8AB43  # 32 bytes of 0xff
    assert reference_crc32c(bytes(range(32))) == 0x46DD794E  # incrementing 0..31
    assert reference_crc32c(b"56789", reference_crc32c(b"1234")) == 0xE3069283


def test_known_vectors_every_kernel(isa):
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"") == 0
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


# Sizes around the interleaved block (3 x 4096) and its head/tail handling.
SIZES = [1, 7, 8, 63, 64, 65, 255, 256, 257, 511, 512, 4095, STRIDE_BLOCK - 1, STRIDE_BLOCK, STRIDE_BLOCK + 1,
         2 * STRIDE_BLOCK + 37]  # 256: the VPCLMULQDQ kernel folds 256-byte blocks


@pytest.mark.parametrize("n", SIZES)
def test_every_kernel_matches_reference(isa, n):
    data = np.random.default_rng(n).integers(0, 256, n + 3, dtype=np.uint8)
    for offset in (0, 3):  # unaligned sources too
        chunk = data[offset: offset + n]
        assert crc32c(chunk) == reference_crc32c(chunk.tobytes())


@pytest.mark.parametrize("dst_offset", [0, 1, 17, 63])
def test_fused_copy_matches_reference_unaligned_destinations(isa, dst_offset):
    rng = np.random.default_rng(dst_offset)
    sizes = [0, 5, 64, 4096 + 13, 3 * STRIDE_BLOCK + 100]
    src = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    backing = [np.zeros(n + 64, dtype=np.uint8) for n in sizes]
    dst = [b[dst_offset: dst_offset + n] for b, n in zip(backing, sizes)]
    crcs = copy_with_crc32c(src, dst, nthreads=1)
    for s, d, b, c in zip(src, dst, backing, crcs):
        assert np.array_equal(s, d)
        assert c == reference_crc32c(s.tobytes())
        assert not b[:dst_offset].any() and not b[dst_offset + len(s):].any()  # nothing written outside


@pytest.mark.parametrize("nthreads", [2, 3, 8])
def test_threads_split_spans_and_combine_exactly(isa, nthreads):
    # 1 MiB per thread is the grain: these spans are cut mid-span between threads.
    rng = np.random.default_rng(nthreads)
    sizes = [3 << 20, 0, 1, (1 << 20) + 12345, 2 << 20]
    src = [torch.from_numpy(rng.integers(0, 256, n, dtype=np.uint8)) for n in sizes]
    dst = [torch.empty(n, dtype=torch.uint8) for n in sizes]
    crcs = copy_with_crc32c(src, dst, nthreads=nthreads)
    single = copy_with_crc32c(src, None, nthreads=1)
    assert crcs == single
    for s, d in zip(src, dst):
        assert torch.equal(s, d)
    assert crcs[2] == reference_crc32c(src[2].numpy().tobytes())
    assert crcs[1] == 0


def test_tensors_of_any_dtype_are_raw_bytes():
    t = torch.randn(1000, dtype=torch.float64)
    assert crc32c(t) == reference_crc32c(t.numpy().tobytes())
    b = torch.randn(33, dtype=torch.bfloat16)
    out = torch.empty_like(b)
    assert copy_with_crc32c([b], [out]) == [reference_crc32c(b.view(torch.uint8).numpy().tobytes())]
    assert torch.equal(out.view(torch.uint16), b.view(torch.uint16))


def test_a_flipped_bit_changes_the_checksum():
    data = bytearray(np.random.default_rng(0).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    before = crc32c(data)
    data[31337] ^= 0x10
    assert crc32c(data) != before


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"dst\[0\] holds 3 bytes"):
        copy_with_crc32c([bytes(4)], [bytearray(3)])
    with pytest.raises(ValueError, match="dst must have one buffer"):
        copy_with_crc32c([bytes(4)], [])
    with pytest.raises(ValueError, match=r"dst\[0\] must be writable"):
        copy_with_crc32c([bytes(4)], [bytes(4)])
    buf = torch.zeros(16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"dst\[0\] overlaps"):
        copy_with_crc32c([buf[:8]], [buf[4:12]])
    with pytest.raises(ValueError, match=r"src\[0\] must be contiguous"):
        copy_with_crc32c([torch.zeros(4, 4).t()], None)
    with pytest.raises(TypeError, match="data must be a tensor"):
        crc32c(12)
    with pytest.raises(ValueError, match="nthreads"):
        copy_with_crc32c([bytes(4)], None, nthreads=0)
