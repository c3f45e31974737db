"""`osmos demo`: a short tour of what osmos does, on the embedded default, in about a minute
per part on a laptop CPU. Each part returns a row for the summary table: "part", "result" and,
when it wrote PNGs, "pngs" (their paths), linked from the table relative to summary.md."""

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


def part_zoo(out_dir: Path) -> dict:
    """The embedded default: shapes-unet draws every (shape, colour) pair; the zoo classifier scores it."""
    from osmos.zoo.demo import run_demo

    r = run_demo(out_dir)
    return {
        "part": f"Text-to-image on the embedded default ({r['model']}, {r['images']} images, {r['steps']} steps)",
        "result": f"{r['seconds']:.1f} s; classifier agrees on shape {r['shape_acc']:.0%}, colour {r['colour_acc']:.0%}",
        "pngs": [r["grid"]],
    }


def part_erase(out_dir: Path) -> dict:
    """Concept erasure: a closed-form RECE edit removes "red" from shapes-unet; same prompts and
    latents before and after, read by the zoo classifier."""
    from osmos.zoo.demo import run_erase_demo

    r = run_erase_demo(out_dir)
    n_target = r["images"] // 2 - r["others_images"]
    return {
        "part": f"Concept erasure, {r['method']} closed form: \"{r['concept']}\" out of {r['model']} ({r['layers']} K/V layers)",
        "result": f"edit {r['edit_seconds']:.2f} s; classifier sees {r['concept']} in {r['target_rate_before']:.0%} -> "
        f"{r['target_rate_after']:.0%} of {n_target} images of its prompts (chance {r['chance']:.0%}); "
        f"other prompts' (shape, colour) accuracy {r['others_acc_before']:.0%} -> {r['others_acc_after']:.0%} "
        f"({r['others_images']} images); undo exact: {r['undo_exact']}",
        "pngs": [r["grid"]],
    }


def part_replication(out_dir: Path) -> dict:
    """Replication: shapes-memorized's generations for memorized captions and for normal prompts,
    scanned against its training set, and the prompts' memorization scores (no reference set)."""
    from osmos.zoo.demo import run_replication_demo

    r = run_replication_demo(out_dir)
    m, n = r["memorized"], r["normal"]
    return {
        "part": f"Replication scan, {r['model']}: {r['images']} generations vs {r['reference']} training images",
        "result": f"scan ({r['descriptor']}, threshold {r['threshold']:.3f}) flags memorized captions {m['flagged']:.0%} "
        f"vs normal prompts {n['flagged']:.0%} (top-1 similarity mean {m['top1_mean']:.3f} vs {n['top1_mean']:.3f}, "
        f"max {m['top1_max']:.3f} vs {n['top1_max']:.3f}; top-1 is the caption's own image {m['top1_is_own']:.0%}); "
        f"memorization score ({r['score_method']}) flags {m['score_flagged']:.0%} vs {n['score_flagged']:.0%}",
        "pngs": [r["grid"]],
    }


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


def part_erasure_coding(out_dir: Path) -> dict:
    """RS(8,2) over 8 shards of 4 MiB: encode, lose two shards, rebuild them."""
    from osmos.ft import RSCodec

    codec = RSCodec(k=8, m=2)
    shards = list(torch.randint(0, 256, (8, 4 << 20), dtype=torch.uint8))
    t_enc = _median_time(lambda: codec.encode(shards), repeat=3)
    parity = codec.encode(shards)
    alive = {i: shards[i] for i in range(2, 8)} | {8: parity[0], 9: parity[1]}
    t_dec = _median_time(lambda: codec.decode(alive), repeat=3)
    ok = all(torch.equal(a, b) for a, b in zip(codec.decode(alive), shards))
    gbytes = 8 * (4 << 20) / 1e9
    return {
        "part": "Reed-Solomon RS(8,2), 8 x 4 MiB shards",
        "result": f"encode {gbytes / t_enc:.1f} GB/s, decode with 2 lost {gbytes / t_dec:.1f} GB/s; data recovered: {ok}",
    }


def part_similarity(out_dir: Path) -> dict:
    """Exact top-10 cosine search of 100 queries in 200k x 256 vectors: osmos vs torch mm + topk."""
    from osmos.ops import similarity_topk

    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(200_000, 256, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(100, 256, generator=g), dim=1)
    t_osmos = _median_time(lambda: similarity_topk(q, db, 10), repeat=3)
    t_torch = _median_time(lambda: torch.topk(q @ db.T, 10, dim=1), repeat=3)
    _, idx = similarity_topk(q, db, 10)
    same = bool(torch.equal(idx, torch.topk(q @ db.T, 10, dim=1).indices))
    return {
        "part": "Similarity top-10, 100 queries x 200k x 256",
        "result": f"osmos {t_osmos * 1e3:.0f} ms vs torch mm+topk {t_torch * 1e3:.0f} ms "
        f"({t_torch / t_osmos:.1f}x), without the 100 x 200k score matrix; same indices: {same}",
    }


def part_parameter_sharing(out_dir: Path) -> dict:
    """STABLE-RPS: 1x is exactly the dense model; 10x keeps one shared array of a tenth the size."""
    from osmos.compress import rps

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))

    x = torch.randn(32, 64)
    dense = build()
    same = rps.compress(build(), ratio=1, mapper="stable", init="dense")
    exact = bool(torch.equal(dense(x), same(x)))
    small = rps.compress(build(), ratio=10, mapper="stable")
    n_dense = sum(p.numel() for p in dense.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    return {
        "part": "STABLE-RPS parameter sharing (MLP 64-256-10)",
        "result": f"1x output identical to dense: {exact}; 10x: {n_dense} -> {n_small} parameters",
    }


def part_ef21(out_dir: Path) -> dict:
    """EF21 vs EF21-W (Top1) on heterogeneous logistic regression, 100 simulated workers."""
    from osmos.compress.ef21 import simulate
    from osmos.compress.ef21.problems import LogisticNonconvex

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 20, generator=g, dtype=torch.float64)
    b = torch.sign(a @ torch.randn(20, generator=g, dtype=torch.float64))
    scales = torch.logspace(0, 1.5, 100, dtype=torch.float64)
    problem = LogisticNonconvex(a, b).split(100, scales=scales)
    old = simulate(problem, 100, "ef21", "top1", steps=2000, record_every=10)
    new = simulate(problem, 100, "ef21-w", "top1", steps=2000, record_every=10)
    target = old.records[-1]["grad_norm_sq"]
    b_old, b_new = old.bits_to_reach(target), new.bits_to_reach(target)
    return {
        "part": "EF21 vs EF21-W, 100 heterogeneous workers (simulated)",
        "result": f"bits per worker to reach grad-norm^2 {target:.2e}: EF21 {b_old:.3g}, EF21-W {b_new:.3g} "
        f"({b_old / b_new:.2f}x fewer)",
    }


def part_streamline(out_dir: Path) -> dict:
    """Exact sliced inference of a video UNet (diffusers UNetMotionModel, random weights)."""
    from diffusers import UNetMotionModel

    from osmos.accel.streamline import streamline

    torch.manual_seed(0)
    unet = UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        num_attention_heads=2, motion_num_attention_heads=2, motion_max_seq_length=16,
    ).eval()
    x = torch.randn(1, 4, 8, 24, 24)
    ctx = torch.randn(1, 5, 16).repeat_interleave(8, dim=0)
    with torch.no_grad():
        want = unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample
        handle = streamline(unet, spatial_slices=4, temporal_slices=8)
        got = unet(x, torch.tensor(500), encoder_hidden_states=ctx).sample
        handle.remove()
    return {
        "part": "Streamlined Inference, 8 frames 24x24, 4 spatial / 8 temporal slices",
        "result": f"max abs(sliced - original) = {(got - want).abs().max().item():.1e} (exact two-pass GroupNorm)",
    }


def part_step_rehash(out_dir: Path) -> dict:
    """Step Rehash on shapes-unet (DDIM 20): the deep blocks run at every 2nd step and are reused in
    between; same prompts and seed as the full run, timed back to back, scored by the classifier."""
    import osmos.zoo
    from osmos.accel.streamline import RehashConfig, rehash
    from osmos.zoo import data as D

    pipe, clf = osmos.zoo.load("shapes-unet", scheduler="ddim"), osmos.zoo.load("classifier")
    pairs = [(si, ci) for si in range(len(D.SHAPES)) for ci in range(len(D.COLOURS))]
    prompts = [D.prompt_for(D.SHAPES[si], D.COLOURS[ci]) for si, ci in pairs]
    target = torch.tensor(pairs)

    def sample():
        t0 = time.perf_counter()
        images = pipe(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0))
        return images, time.perf_counter() - t0

    pipe(prompts[:2], num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # warm-up, untimed
    full, t_full = sample()
    handle = rehash(pipe.unet, RehashConfig(interval=2))
    try:
        fast, t_fast = sample()
    finally:
        handle.remove()
    acc = {}
    for name, images in (("full", full), ("rehash", fast)):
        pred = clf.predict(images)
        acc[name] = float(((pred["shape"] == target[:, 0]) & (pred["colour"] == target[:, 1])).float().mean())
    rel = float((fast - full).norm() / full.norm())
    return {
        "part": "Step Rehash, shapes-unet, 36 images, DDIM 20, deep blocks every 2nd step",
        "result": f"{t_full:.1f} s -> {t_fast:.1f} s ({t_full / t_fast:.2f}x); (shape, colour) accuracy "
        f"{acc['full']:.0%} -> {acc['rehash']:.0%}; images {rel:.0%} (rel. L2) from the full run",
    }


PARTS: list[Part] = [part_zoo, part_erase, part_replication, part_topk, part_erasure_coding, part_similarity,
                     part_parameter_sharing, part_ef21, part_streamline, part_step_rehash]


def _links(paths: list[str], base: Path) -> str:
    """Markdown links to the PNGs, relative to `base` (the folder of summary.md) where they lie under it."""
    links = []
    for p in paths:
        path = Path(p).resolve()
        target = path.relative_to(base.resolve()) if path.is_relative_to(base.resolve()) else path
        links.append(f"[{path.name}]({target.as_posix()})")
    return ", ".join(links)


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
        pngs = "; " + ", ".join(row["pngs"]) if row.get("pngs") else ""
        print(f"[{row['seconds']:5.1f} s] {row['part']}: {row['result']}{pngs}", flush=True)
    lines = ["| part | result | PNG | time |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['result']} | {_links(r.get('pngs', []), out)} | {r['seconds']:.1f} s |" for r in rows]
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table + f"\n\nwritten to {out.resolve()}")
    if any(r["result"].startswith("FAILED") for r in rows):
        raise SystemExit(1)
    return rows
