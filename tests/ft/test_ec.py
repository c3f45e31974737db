"""osmos.ft.RSCodec: any k of k + m blocks recover the data, for every erasure pattern of
small codes; parity equals ISA-L's; every input kind round-trips; errors name the problem."""

import itertools
import random

import numpy as np
import pytest
import torch

from conftest import load_isal

from osmos import _native
from osmos.ft import RSCodec

pytestmark = pytest.mark.skipif(not _native.has_cpu_kernel("gf256_matmul"), reason="osmos._C not built")


def _data(k, length, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, length, dtype=np.uint8) for _ in range(k)]


def _assert_blocks_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = g.cpu().numpy() if isinstance(g, torch.Tensor) else np.frombuffer(g, dtype=np.uint8) if not isinstance(g, np.ndarray) else g
        np.testing.assert_array_equal(g.reshape(-1).view(np.uint8), np.asarray(e).reshape(-1).view(np.uint8))


@pytest.mark.parametrize("k,m", [(1, 1), (1, 3), (2, 2), (3, 2), (4, 3), (5, 1), (3, 0)])
def test_every_erasure_pattern(k, m):
    codec = RSCodec(k, m)
    data = _data(k, 97)
    blocks = data + codec.encode(data)
    for lost_count in range(m + 1):
        for lost in itertools.combinations(range(k + m), lost_count):
            available = {i: blocks[i] for i in range(k + m) if i not in lost}
            _assert_blocks_equal(codec.decode(available), data)


def test_large_code_random_patterns():
    k, m = 200, 56
    codec = RSCodec(k, m)
    data = _data(k, 130)
    blocks = data + codec.encode(data)
    rnd = random.Random(1)
    for _ in range(3):
        keep = rnd.sample(range(k + m), k)
        _assert_blocks_equal(codec.decode({i: blocks[i] for i in keep}), data)


def test_parity_matches_isal():
    isal = load_isal()
    for k, m, length in [(4, 2, 1000), (8, 2, 4096), (10, 4, 777)]:
        data = _data(k, length, seed=k)
        ref = isal.IsalCodec(k, m)
        parity = [np.zeros(length, dtype=np.uint8) for _ in range(m)]
        ref.run(length, m, ref.encode_tables, ref.pointers([d.ctypes.data for d in data]),
                ref.pointers([p.ctypes.data for p in parity]))
        _assert_blocks_equal(RSCodec(k, m).encode(data), parity)


def _as_kind(kind, arr):
    if kind == "bytes":
        return arr.tobytes()
    if kind == "bytearray":
        return bytearray(arr.tobytes())
    if kind == "memoryview":
        return memoryview(arr.tobytes())
    if kind == "numpy":
        return arr.copy()
    if kind == "numpy-f32":
        return arr.copy().view(np.float32)
    if kind == "torch":
        return torch.from_numpy(arr.copy())
    if kind == "torch-f32":
        return torch.from_numpy(arr.copy()).view(torch.float32).reshape(4, -1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "numpy", "numpy-f32", "torch", "torch-f32"])
def test_round_trip_each_input_kind(kind):
    k, m = 4, 2
    codec = RSCodec(k, m)
    raw = _data(k, 64)
    data = [_as_kind(kind, d) for d in raw]
    parity = codec.encode(data)
    expected_type = {"torch": torch.Tensor, "numpy": np.ndarray}.get(kind.split("-")[0], bytearray)
    assert all(isinstance(p, expected_type) for p in parity)
    reference = codec.encode(raw)
    _assert_blocks_equal(parity, reference)
    available = {0: data[0], 2: data[2], 4: parity[0], 5: parity[1]}
    decoded = codec.decode(available)
    assert decoded[0] is data[0] and decoded[2] is data[2]  # survivors are returned as they are
    _assert_blocks_equal(decoded, raw)


def test_caller_supplied_outputs():
    k, m, length = 5, 3, 300
    codec = RSCodec(k, m)
    data = [torch.from_numpy(d) for d in _data(k, length)]
    parity_out = [torch.empty(length, dtype=torch.uint8) for _ in range(m)]
    parity = codec.encode(data, out=parity_out)
    assert all(p is o for p, o in zip(parity, parity_out))
    decode_out = [np.empty(length, dtype=np.uint8) for _ in range(k)]
    available = {1: data[1], 3: data[3], 5: parity[0], 6: parity[1], 7: parity[2]}
    decoded = codec.decode(available, out=decode_out)
    assert all(d is o for d, o in zip(decoded, decode_out))
    _assert_blocks_equal(decoded, data)
    lost_only = {0: torch.empty(length, dtype=torch.uint8), 2: torch.empty(length, dtype=torch.uint8),
                 4: torch.empty(length, dtype=torch.uint8)}
    decoded = codec.decode(available, out=lost_only)
    assert decoded[0] is lost_only[0] and decoded[1] is data[1] and decoded[4] is lost_only[4]
    _assert_blocks_equal(decoded, data)
    with pytest.raises(ValueError, match="missing \\[4\\]"):
        codec.decode(available, out={0: lost_only[0], 2: lost_only[2]})
    into_bytearrays = codec.encode([d.numpy().tobytes() for d in data], out=[bytearray(length) for _ in range(m)])
    _assert_blocks_equal(into_bytearrays, parity)


def test_decode_matrices_are_cached():
    codec = RSCodec(4, 2)
    data = _data(4, 10)
    blocks = data + codec.encode(data)
    codec.decode({i: blocks[i] for i in (1, 2, 4, 5)})
    first = codec._decoder((1, 2, 4, 5))
    codec.decode({i: blocks[i] for i in (1, 2, 4, 5)})
    assert codec._decoder((1, 2, 4, 5)) is first
    assert len(codec._decoders) == 1


def test_more_than_k_blocks_and_empty_blocks():
    codec = RSCodec(3, 2)
    data = _data(3, 50)
    blocks = data + codec.encode(data)
    _assert_blocks_equal(codec.decode(dict(enumerate(blocks))), data)
    empty = [b""] * 3
    assert [bytes(p) for p in codec.encode(empty)] == [b"", b""]
    assert RSCodec(3, 0).encode(data) == []


def test_errors():
    with pytest.raises(ValueError, match="k \\+ m"):
        RSCodec(200, 57)
    with pytest.raises(ValueError, match="k"):
        RSCodec(0, 2)
    with pytest.raises(TypeError, match="m"):
        RSCodec(3, 1.5)
    codec = RSCodec(3, 2)
    data = _data(3, 16)
    parity = codec.encode(data)
    with pytest.raises(ValueError, match="k = 3"):
        codec.encode(data[:2])
    with pytest.raises(ValueError, match="one length"):
        codec.encode([data[0], data[1], data[2][:8]])
    with pytest.raises(TypeError, match="data_blocks\\[1\\]"):
        codec.encode([data[0], 5, data[2]])
    with pytest.raises(ValueError, match="contiguous"):
        codec.encode([torch.zeros(4, 8, dtype=torch.uint8).t()] * 3)
    with pytest.raises(ValueError, match="at least k = 3"):
        codec.decode({0: data[0], 4: parity[1]})
    with pytest.raises(ValueError, match="indices"):
        codec.decode({0: data[0], 1: data[1], 5: parity[0]})
    with pytest.raises(ValueError, match="indices"):
        codec.decode({-1: data[0], 1: data[1], 2: data[2]})
    with pytest.raises(TypeError, match="mapping"):
        codec.decode([data[0], data[1], data[2]])
    with pytest.raises(ValueError, match="read-only"):
        codec.encode(data, out=[b"\0" * 16, b"\0" * 16])
    with pytest.raises(ValueError, match="2 buffers"):
        codec.encode(data, out=[bytearray(16)])
    with pytest.raises(ValueError, match="overlap"):
        codec.encode(data, out=[data[0], bytearray(16)])
    with pytest.raises(ValueError, match="overlap"):
        codec.bind_encode(data, [data[2], bytearray(16)])
    shared = np.zeros(40, dtype=np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        codec.encode(data, out=[shared[:16], shared[8:24]])
    with pytest.raises(ValueError, match="16 bytes"):
        codec.encode(data, out=[bytearray(15), bytearray(15)])


@pytest.mark.gpu
def test_cuda_round_trip_matches_cpu():
    k, m = 6, 3
    codec = RSCodec(k, m)
    for length in (4096, 1001):
        data = [torch.from_numpy(d) for d in _data(k, length)]
        parity_cpu = codec.encode(data)
        data_gpu = [d.cuda() for d in data]
        parity_gpu = codec.encode(data_gpu)
        assert all(p.is_cuda for p in parity_gpu)
        _assert_blocks_equal(parity_gpu, parity_cpu)
        available = {i: data_gpu[i] for i in (0, 4)} | {6 + p: parity_gpu[p] for p in range(m)} | {2: data_gpu[2]}
        _assert_blocks_equal(codec.decode(available), data)


def test_repeated_calls_on_the_same_buffers_see_new_contents_and_kernels():
    """encode / decode into the same buffers again reuse the product planned the first time
    (osmos.ft.ec caches it by addresses): new contents and a new CPU kernel must still count."""
    k, m, length = 5, 3, 777
    codec = RSCodec(k, m)
    data = [torch.from_numpy(d) for d in _data(k, length)]
    parity = [torch.empty(length, dtype=torch.uint8) for _ in range(m)]
    rng = np.random.default_rng(5)
    before = _native.C.cpu_isa()
    try:
        for isa in ("avx512", "avx2", "scalar", "avx512"):
            _native.C.set_cpu_isa(isa)
            for j in range(k):
                data[j].copy_(torch.from_numpy(rng.integers(0, 256, length, dtype=np.uint8)))
            codec.encode(data, out=parity)
            _assert_blocks_equal(parity, RSCodec(k, m).encode([d.clone() for d in data]))
            rebuilt = {0: torch.zeros(length, dtype=torch.uint8), 3: torch.zeros(length, dtype=torch.uint8)}
            available = {1: data[1], 2: data[2], 4: data[4], 5: parity[0], 7: parity[2]}
            codec.decode(available, out=rebuilt)
            _assert_blocks_equal([rebuilt[0], rebuilt[3]], [data[0], data[3]])
        kernels = {key[-1] for key in codec._calls}
        assert len(kernels) == len({_kernel_for(isa) for isa in ("avx512", "avx2", "scalar")})
    finally:
        _native.C.set_cpu_isa(before)


def _kernel_for(isa: str) -> str:
    before = _native.C.cpu_isa()
    try:
        _native.C.set_cpu_isa(isa)
        return _native.C.gf256_matmul_kernel()
    finally:
        _native.C.set_cpu_isa(before)


def test_bound_calls_on_fixed_buffers():
    k, m, length = 4, 2, 1000
    codec = RSCodec(k, m)
    data = [torch.from_numpy(d) for d in _data(k, length)]
    parity = [torch.empty(length, dtype=torch.uint8) for _ in range(m)]
    encode = codec.bind_encode(data, parity)
    assert encode()[0] is parity[0]
    _assert_blocks_equal(parity, codec.encode(data))
    data[1].fill_(7)  # new contents, same memory: the bound call sees them
    encode()
    _assert_blocks_equal(parity, codec.encode(data))
    available = {1: data[1], 3: data[3], 4: parity[0], 5: parity[1]}
    rebuilt = {0: torch.empty(length, dtype=torch.uint8), 2: torch.empty(length, dtype=torch.uint8)}
    outputs = codec.bind_decode(available, rebuilt)()
    assert outputs[0] is rebuilt[0] and outputs[1] is rebuilt[2]
    _assert_blocks_equal([rebuilt[0], rebuilt[2]], [data[0], data[2]])
    assert codec.bind_decode({i: data[i] for i in range(k)}, {})() == []
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        codec.bind_decode(available, {0: rebuilt[0]})
