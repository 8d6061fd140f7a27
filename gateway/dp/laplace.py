"""Facts about OpenDP's discrete Laplace noise that both mechanisms (per window, continual) need."""

from __future__ import annotations

import math


def noise_variance(scale: float) -> float:
    """Variance of OpenDP's discrete Laplace noise with this scale: 2a/(1-a)^2, a = exp(-1/scale)."""
    a = math.exp(-1.0 / scale)
    return 2.0 * a / (1.0 - a) ** 2


def tail_bound(scale: float, p: float) -> int:
    """Smallest integer t >= 0 with P(|Z| > t) <= p for discrete Laplace(scale)."""
    a = math.exp(-1.0 / scale)
    # P(|Z| > t) = P(|Z| >= t+1) = 2 a^(t+1) / (1 + a)
    x = math.log(p * (1.0 + a) / 2.0) / math.log(a)
    t = max(0, math.ceil(x) - 1)
    while 2.0 * a ** (t + 1) / (1.0 + a) > p:  # guard against rounding at the boundary
        t += 1
    return t
