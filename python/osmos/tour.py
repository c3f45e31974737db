"""`osmos demo`: a short tour of what osmos does, on the embedded default, in about a minute
per part on a laptop CPU. Each part returns a row for the summary table (and may write PNGs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

Part = Callable[[Path], dict]


def _median_time(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def part_topk(out_dir: Path) -> dict:
    """EF21 TopK compression of a 4M-entry gradient at 1%: osmos vs torch.topk, same inputs."""
    from osmos.ops import topk_compress
    from osmos.ops.topk_compress import reference_topk_compress

    n, k = 4 * 2**20, 4 * 2**20 // 100
    x = torch.randn(n)
    state = torch.zeros(n)

    def torch_path():
        d = x - state
        idx = torch.topk(d.abs(), k, sorted=False).indices
        return d[idx], idx

    t_osmos = _median_time(lambda: topk_compress(x, state.clone(), k))
    t_torch = _median_time(torch_path)
    v, i = topk_compress(x, state.clone(), k)
    rv, ri = reference_topk_compress(x, state.clone(), k)
    exact = bool(torch.equal(i, ri) and torch.equal(v, rv))
    return {
        "part": "TopK EF21 compression (n=4M, k=1%)",
        "result": f"osmos {t_osmos * 1e3:.1f} ms vs torch.topk {t_torch * 1e3:.1f} ms "
        f"({t_torch / t_osmos:.1f}x); identical to reference: {exact}",
    }


PARTS: list[Part] = [part_topk]


def run(out_dir: str | Path = "out/demo") -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in PARTS:
        t0 = time.perf_counter()
        try:
            row = part(out)
        except Exception as exc:  # one broken part must not hide the others
            row = {"part": part.__name__, "result": f"FAILED: {type(exc).__name__}: {exc}"}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"[{row['seconds']:5.1f} s] {row['part']}: {row['result']}", flush=True)
    lines = ["| part | result | time |", "|---|---|---|"]
    lines += [f"| {r['part']} | {r['result']} | {r['seconds']:.1f} s |" for r in rows]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table + f"\n\nwritten to {out.resolve()}")
    if any(r["result"].startswith("FAILED") for r in rows):
        raise SystemExit(1)
    return rows
