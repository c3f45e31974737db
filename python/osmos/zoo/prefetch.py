"""Training batches drawn one or two steps ahead on a worker thread, in the loop's exact order.

A GPU training step of the zoo's small models is bound by the CPU (rendering the batch, then
launching the step's kernels); drawing the next batches on a second thread while the main thread
launches hides the rendering. Every batch comes from the same seeded generator in the same order
as drawing it in the loop, so a run with the stream is bitwise the run without it, and
`generator_state()` gives the state from which the next unconsumed batch is drawn (what a
checkpoint must store for a resumed run to continue identically).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

_STOP = object()


class BatchStream:
    """batches = BatchStream(draw, generator, first_step); batches.next() -> draw(step) for
    step = first_step, first_step + 1, ...; `draw(step)` must take all its randomness from
    `generator`. ``ahead`` batches are drawn in advance (0: no thread, drawn on call)."""

    def __init__(self, draw: Callable[[int], tuple], generator: torch.Generator, first_step: int, ahead: int = 2):
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self._draw, self._g, self._step, self._ahead = draw, generator, first_step, ahead
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._halt = threading.Event()
        self._start()

    def _start(self) -> None:
        if self._ahead == 0:
            return
        self._queue, self._halt = queue.Queue(maxsize=self._ahead), threading.Event()
        self._thread = threading.Thread(target=self._work, args=(self._step, self._queue, self._halt),
                                        name="osmos-batches", daemon=True)
        self._thread.start()

    def _work(self, step: int, out: queue.Queue, halt: threading.Event) -> None:
        while not halt.is_set():
            state = self._g.get_state()
            try:
                item = ("ok", state, self._draw(step))
            except BaseException as e:  # handed to the consumer, raised there
                item = ("error", state, e)
            delivered = False
            while not delivered and not halt.is_set():
                try:
                    out.put(item, timeout=0.05)
                    delivered = True
                except queue.Full:
                    continue
            if not delivered:  # stopped with a batch in hand: rewind so it is drawn again
                self._g.set_state(state)
                return
            if item[0] == "error":
                return
            step += 1

    def next(self) -> tuple:
        if self._queue is None:
            batch = self._draw(self._step)
        else:
            kind, _, batch = self._queue.get()
            if kind == "error":
                raise batch
        self._step += 1
        return batch

    def _stop(self) -> list:
        """Stops the worker; returns the batches it drew that were not consumed, oldest first."""
        if self._thread is None:
            return []
        self._halt.set()
        left = []
        while self._thread.is_alive() or not self._queue.empty():
            try:
                left.append(self._queue.get(timeout=0.05))
            except queue.Empty:
                continue
        self._thread.join()
        self._thread = None
        return left

    def generator_state(self) -> torch.Tensor:
        """The generator state from which the next unconsumed batch is drawn. The worker is
        stopped, the generator rewound to that state, and the worker restarted from there."""
        left = self._stop()
        if left:
            self._g.set_state(left[0][1])
        state = self._g.get_state()
        self._start()
        return state

    def close(self) -> None:
        """Stops the worker and rewinds the generator to the next unconsumed batch's state."""
        left = self._stop()
        if left:
            self._g.set_state(left[0][1])
        self._ahead = 0
