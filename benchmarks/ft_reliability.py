"""Probability of losing an in-memory snapshot vs node count, for RS(k, m) stripes and plain
replication at comparable memory cost (osmos.ft.reliability closed forms; the Monte Carlo
column checks the closed form where it is measurable).

  python benchmarks/ft_reliability.py [--rate 1e-4] [--window 0.25]

--rate: node failures per node-hour (an assumption to set for your cluster); --window: hours a
stripe stays exposed after a failure (rebuild time or the next snapshot).
"""

from __future__ import annotations

import argparse

from osmos.ft.reliability import (
    failure_probability,
    loss_probability_ec,
    loss_probability_replication,
    monte_carlo_loss_ec,
)

SCHEMES = [  # (label, memory per data byte, function of (nodes, p))
    ("RS(8,1)", 1.125, lambda n, p: loss_probability_ec(n, 8, 1, p)),
    ("RS(8,2)", 1.25, lambda n, p: loss_probability_ec(n, 8, 2, p)),
    ("RS(10,4)", 1.4, lambda n, p: loss_probability_ec(n, 10, 4, p)),
    ("2 copies", 2.0, lambda n, p: loss_probability_replication(n, 2, p)),
    ("RS(4,4)", 2.0, lambda n, p: loss_probability_ec(n, 4, 4, p)),
    ("3 copies", 3.0, lambda n, p: loss_probability_replication(n, 3, p)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1e-4, help="node failures per node-hour")
    parser.add_argument("--window", type=float, default=0.25, help="exposure window in hours")
    args = parser.parse_args()
    p = failure_probability(args.rate, args.window)
    print(f"node failure probability per window p = {p:.3g} (rate {args.rate:g}/node-hour, window {args.window:g} h)\n")
    print("| nodes | " + " | ".join(f"{label} ({mem:g}x memory)" for label, mem, _ in SCHEMES) + " |")
    print("|---|" + "---|" * len(SCHEMES))
    for nodes in [120, 840, 2520, 10_080]:  # nodes % (k + m) left over hold no stripe
        print(f"| {nodes} | " + " | ".join(f"{fn(nodes, p):.2e}" for _, _, fn in SCHEMES) + " |")
    # Monte Carlo check where losses are frequent enough to count: a 100x worse window.
    worse = failure_probability(args.rate, args.window * 100)
    closed = loss_probability_ec(81, 8, 1, worse)
    simulated = monte_carlo_loss_ec(81, 8, 1, worse, trials=200_000, seed=0)
    print(f"\nMonte Carlo check, 81 nodes, RS(8,1), p = {worse:.3g}: closed form {closed:.4g}, "
          f"simulated {simulated:.4g} (200,000 trials)")


if __name__ == "__main__":
    main()
