"""UCE / RECE closed-form edits at Stable Diffusion 1.4's exact cross-attention shapes.

16 diffusers `Attention` cross-attention modules of SD 1.4's UNet (query widths 320/640/1280 as
in its down, mid and up blocks; 768-d CLIP text), random weights and random 77-token prompt
states. Times, in one process on the same inputs:
  * osmos `uce_edit` (whole call) vs the reference formula (explicit float32 inverse per layer);
  * one RECE epoch of osmos `rece_edit` (derivation + UCE update of all 32 K/V matrices) vs the
    reference epoch (sum of W'^T W' and W'^T W over all layers, explicit inverses, float32);
and reports each result's error against the float64 formula evaluated directly.

    PYTHONPATH=python python benchmarks/bench_closed_form.py [--repeats 5] [--threads N] [--rece-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from osmos.erase.closed_form import cross_attention_kv, rece_edit, uce_edit
from osmos.erase.closed_form_reference import reference_rece_embedding, reference_uce
from osmos.erase.text_encoding import TextEncoding, paired_rows, token_rows

TEXT_DIM, TOKENS = 768, 77
# query width of each of SD 1.4's 16 cross-attention layers: down 0-2, mid, up 1-3
SD14_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]


class SD14CrossAttention(nn.Module):
    """SD 1.4's 16 cross-attention modules (diffusers `Attention`, 8 heads), nothing else."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            Attention(query_dim=w, cross_attention_dim=TEXT_DIM, heads=8, dim_head=w // 8) for w in SD14_WIDTHS
        )


def random_text_encoding() -> TextEncoding:
    """Deterministic random CLIP-like states per prompt: [77, 768], norm about 28 per token."""

    def states_of(prompt: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(TOKENS, TEXT_DIM, generator=gen)

    def encode(prompts):
        return torch.stack([states_of(p) for p in prompts]), torch.ones(len(prompts), TOKENS, dtype=torch.bool)

    def subject_index(prompts):
        return torch.tensor([len(p.split()) for p in prompts], dtype=torch.int64)

    return TextEncoding(encode, subject_index)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor], base: list[torch.Tensor]) -> float:
    """max |got - want| / max |want - base| over layers: error relative to the size of the edit."""
    err = max((g.double() - w).abs().max().item() for g, w in zip(got, want))
    return err / max((w - b.double()).abs().max().item() for w, b in zip(want, base))


def bench_uce(case: str, erase, preserve, repeats: int) -> dict:
    torch.manual_seed(0)
    model, enc = SD14CrossAttention(), random_text_encoding()
    layers = cross_attention_kv(model)
    w0 = [l.weight.detach().clone() for l in layers.values()]
    c_e, c_g = paired_rows(token_rows(enc, erase, "all"), token_rows(enc, [" "] * len(erase), "all"))
    c_p = torch.cat(token_rows(enc, preserve, "all")) if preserve else None

    def osmos_edit():
        uce_edit(model, enc, erase=erase, guide=" ", preserve=preserve).undo(model)

    t_osmos = median_time(osmos_edit, repeats)
    t_ref = median_time(lambda: reference_uce(w0, c_e, c_g, c_p, 0.5), repeats)
    exact = reference_uce(w0, c_e, c_g, c_p, 0.5, dtype=torch.float64)
    uce_edit(model, enc, erase=erase, guide=" ", preserve=preserve)
    ours = [l.weight.detach() for l in layers.values()]
    return dict(step="UCE edit (32 K/V)", case=case, osmos=t_osmos, ref=t_ref,
                err_osmos=rel_err(ours, exact, w0), err_ref=rel_err(reference_uce(w0, c_e, c_g, c_p, 0.5), exact, w0))


def bench_rece(case: str, erase, epochs: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model, enc = SD14CrossAttention(), random_text_encoding()
    layers = cross_attention_kv(model)
    w0 = [l.weight.detach().clone() for l in layers.values()]
    stamps: list[float] = []

    def validate(_):
        stamps.append(time.perf_counter())
        return -len(stamps)  # every epoch scores lower: no snapshots inside the timed epochs

    setup, per_epoch = [], []
    for _ in range(repeats + 1):
        stamps.clear()
        start = time.perf_counter()
        edit = rece_edit(model, enc, erase=erase, epochs=epochs, lambda_reg=1e-3, validate=validate)
        setup.append(stamps[0] - start)
        per_epoch += [b - a for a, b in zip(stamps, stamps[1:])]
        edit.undo(model)
    # the reference epoch, on the weights after osmos' UCE edit
    edit = rece_edit(model, enc, erase=erase, epochs=1, lambda_reg=1e-3, validate=lambda _: 0.0)  # keeps epoch 0
    w1 = [l.weight.detach().clone() for l in layers.values()]
    target = torch.cat(token_rows(enc, erase, "all"))
    guide_rows = token_rows(enc, [" "] * len(erase), "all")
    preserve = torch.cat(token_rows(enc, [" "], "all"))
    sizes = [r.shape[0] for r in token_rows(enc, erase, "all")]

    def reference_epoch():
        found = reference_rece_embedding(w0, w1, target, 1e-3)
        c_found, c_guide = paired_rows(list(found.split(sizes)), guide_rows)
        return found, reference_uce(w1, c_found, c_guide, preserve, 0.1, 1.0, 0.1)

    t_ref = median_time(reference_epoch, repeats)
    exact = reference_rece_embedding(w0, w1, target, 1e-3, dtype=torch.float64)

    def err(found):
        return ((found.double() - exact).norm() / exact.norm()).item()

    edit.undo(model)
    return [
        dict(step="RECE setup: UCE + Gram of originals", case=case, osmos=statistics.median(setup[1:]), ref=float("nan"),
             err_osmos=float("nan"), err_ref=float("nan")),
        dict(step="RECE epoch (derive c' + UCE of 32 K/V)", case=case, osmos=statistics.median(per_epoch[epochs:]),
             ref=t_ref, err_osmos=err(edit.derived[0]), err_ref=err(reference_epoch()[0])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rece-only", action="store_true", help="only the RECE rows")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    concepts = [f"concept {i}" for i in range(5)]
    others = [f"other concept number {i}" for i in range(20)]
    rows = []
    runs = [
        lambda: [bench_uce("1 concept, subject token + rest (75 rows)", concepts[:1], [], args.repeats)],
        lambda: [bench_uce("5 concepts, 20 preserved (375 + 1460 rows)", concepts, others, args.repeats)],
        lambda: bench_rece("1 concept (75 rows)", concepts[:1], 3, args.repeats),
        lambda: bench_rece("5 concepts (375 rows)", concepts, 3, args.repeats),
    ]
    for run in runs[2:] if args.rece_only else runs:
        rows += run()
        print(f"done: {rows[-1]['step']}, {rows[-1]['case']}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| step | case | osmos median (s) | reference median (s) | speed-up | osmos rel. error | reference rel. error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speed = f"{r['ref'] / r['osmos']:.1f}x" if r["ref"] == r["ref"] else "-"

        def fmt(x, spec):
            return "-" if x != x else format(x, spec)

        print(f"| {r['step']} | {r['case']} | {r['osmos']:.3f} | {fmt(r['ref'], '.3f')} | {speed} | "
              f"{fmt(r['err_osmos'], '.1e')} | {fmt(r['err_ref'], '.1e')} |")


if __name__ == "__main__":
    main()
