"""osmos.zoo.prefetch.BatchStream: batches drawn ahead on a thread are the loop's own batches, in
order, and the generator state it reports draws the next unconsumed batch."""

import pytest
import torch

from osmos.zoo.prefetch import BatchStream


def _draw_with(g):
    return lambda step: (step, torch.randn(3, generator=g), torch.randint(0, 100, (2,), generator=g))


def _direct(seed, first, n):
    g = torch.Generator().manual_seed(seed)
    draw = _draw_with(g)
    return [draw(first + i) for i in range(n)]


def _same(a, b):
    return a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_stream_yields_the_direct_draws_in_order(ahead):
    g = torch.Generator().manual_seed(7)
    stream = BatchStream(_draw_with(g), g, first_step=5, ahead=ahead)
    got = [stream.next() for _ in range(6)]
    stream.close()
    assert all(_same(a, b) for a, b in zip(got, _direct(7, 5, 6)))


@pytest.mark.parametrize("ahead", [0, 2])
def test_generator_state_draws_the_next_unconsumed_batch(ahead):
    g = torch.Generator().manual_seed(3)
    stream = BatchStream(_draw_with(g), g, first_step=0, ahead=ahead)
    first = [stream.next() for _ in range(3)]
    state = stream.generator_state()  # the worker has drawn ahead; the state is still batch 3's
    rest = [stream.next() for _ in range(2)]
    stream.close()
    expected = _direct(3, 0, 5)
    assert all(_same(a, b) for a, b in zip(first + rest, expected))
    g2 = torch.Generator()
    g2.set_state(state)
    assert _same(_draw_with(g2)(3), expected[3])
    assert torch.equal(g.get_state(), stream.generator_state())  # closed: rewound to batch 5's state
    g3 = torch.Generator().manual_seed(3)
    for i in range(5):
        _draw_with(g3)(i)
    assert torch.equal(g.get_state(), g3.get_state())


def test_errors_in_the_worker_reach_the_consumer():
    g = torch.Generator().manual_seed(0)

    def draw(step):
        if step == 2:
            raise RuntimeError("render failed")
        return (step,)

    stream = BatchStream(draw, g, first_step=0, ahead=2)
    assert stream.next() == (0,) and stream.next() == (1,)
    with pytest.raises(RuntimeError, match="render failed"):
        stream.next()
    with pytest.raises(ValueError, match="ahead"):
        BatchStream(draw, g, 0, ahead=-1)
