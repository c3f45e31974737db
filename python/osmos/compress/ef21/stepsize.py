"""EF21 / EF21-W theory: contraction constants and the stepsize (Richtarik et al. 2021;
Error Feedback Reloaded, ICLR 2024).

For a compressor with contraction alpha (TopK: alpha = k/d):
    theta = 1 - sqrt(1 - alpha),  beta = (1 - alpha) / (1 - sqrt(1 - alpha)).
EF21 (original analysis):        gamma = 1 / (L + L_QM sqrt(beta / theta)),  L_QM = sqrt(mean L_i^2)
EF21-W (and EF21, new analysis): gamma = 1 / (L + L_AM sqrt(beta / theta)),  L_AM = mean L_i
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def theta_beta(alpha: float) -> tuple[float, float]:
    """(theta, beta) of a compressor with contraction alpha in (0, 1]; alpha = 1 gives (1, 0)."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    root = math.sqrt(1.0 - alpha)
    theta = 1.0 - root
    return theta, (1.0 - alpha) / theta


def _check_L_i(L_i: Sequence[float]) -> list[float]:
    values = [float(v) for v in L_i]
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"L_i must be a non-empty sequence of positive finite numbers, got {L_i!r}")
    return values


def l_qm(L_i: Sequence[float]) -> float:
    """Quadratic mean sqrt(mean L_i^2) of the workers' smoothness constants."""
    values = _check_L_i(L_i)
    return math.sqrt(sum(v * v for v in values) / len(values))


def l_am(L_i: Sequence[float]) -> float:
    """Arithmetic mean of the workers' smoothness constants."""
    values = _check_L_i(L_i)
    return sum(values) / len(values)


def ef21_stepsize(L: float, L_i: Sequence[float], k: int, d: int, weighted: bool = True) -> float:
    """The largest stepsize the theory allows for TopK with k of d entries.

    Args:
        L: smoothness constant of f = mean f_i.
        L_i: smoothness constants of the n workers' f_i.
        k, d: entries kept per message and vector length (alpha = k / d).
        weighted: True for EF21-W / new EF21 analysis (L_AM), False for the original (L_QM).
    """
    if not (L > 0 and math.isfinite(L)):
        raise ValueError(f"L must be positive and finite, got {L!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be an int >= 1, got {d!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise ValueError(f"k must be an int in [1, d={d}], got {k!r}")
    theta, beta = theta_beta(k / d)
    mean_L = l_am(L_i) if weighted else l_qm(L_i)
    return 1.0 / (L + mean_L * math.sqrt(beta / theta))
