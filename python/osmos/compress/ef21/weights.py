"""EF21-W aggregation weights w_i = L_i / sum_j L_j: from given smoothness constants, or
estimated online.

Online estimate: each round every rank measures how much its local gradient moved,
D_i = ||grad_i(x^{t+1}) - grad_i(x^t)||. All ranks share one x^t, so D_i / ||x^{t+1} - x^t|| is
a local smoothness estimate and the common denominator cancels in w_i. The estimate is an
exponential moving average of D_i (momentum m): L_i <- m L_i + (1 - m) D_i. D_i travels inside
the hook's all_gather message (one extra 4-byte word), so it costs no extra collective; it needs
one extra copy of the local gradient per rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def weights_from_smoothness(L_i: Sequence[float], n: int) -> list[float]:
    """w_i = L_i / sum_j L_j for n workers; raises ValueError on a wrong length or a value <= 0."""
    try:
        values = [float(v) for v in L_i]
    except (TypeError, ValueError):
        raise TypeError(f"weights must be None, 'online' or a sequence of {n} numbers, got {L_i!r}") from None
    if len(values) != n:
        raise ValueError(f"weights must have one entry per rank ({n}), got {len(values)}")
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"weights must be positive and finite, got {values}")
    total = sum(values)
    return [v / total for v in values]


class OnlineSmoothness:
    """EMA of each rank's gradient movement D_i; `weights()` normalises it (uniform until the
    first measurement)."""

    def __init__(self, n: int, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"online_momentum must be in [0, 1), got {momentum!r}")
        self.n = n
        self.momentum = momentum
        self.estimate: list[float] | None = None

    def update(self, movement: Sequence[float]) -> None:
        """movement[i] = D_i of this round (the same list on every rank)."""
        if self.estimate is None:
            self.estimate = [float(v) for v in movement]
        else:
            m = self.momentum
            self.estimate = [m * e + (1.0 - m) * float(v) for e, v in zip(self.estimate, movement)]

    def weights(self) -> list[float]:
        if self.estimate is None or not all(e > 0 and math.isfinite(e) for e in self.estimate):
            return [1.0 / self.n] * self.n
        total = sum(self.estimate)
        return [e / total for e in self.estimate]

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "estimate": self.estimate}

    def load_state_dict(self, sd: dict) -> None:
        self.momentum = float(sd["momentum"])
        self.estimate = None if sd["estimate"] is None else [float(v) for v in sd["estimate"]]
