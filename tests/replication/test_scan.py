import json

import pytest
import torch
from helpers import save_png, smooth_images

from osmos.replication import EmbeddingIndex, PixelDescriptor, build_index, scan
from osmos.replication.cli import add_parser, main


@pytest.fixture
def folders(tmp_path):
    """reference: 12 images of mixed sizes; generated: copies of references 2, 5, 7 (resized,
    brighter), 4 new images and one unreadable file."""
    ref = smooth_images(12, 48, seed=1)
    new = smooth_images(4, 48, seed=2)
    ref_dir, gen_dir = tmp_path / "ref", tmp_path / "gen"
    ref_dir.mkdir()
    gen_dir.mkdir()
    for i in range(12):
        save_png(ref[i], ref_dir / f"r{i:02d}.png", size=(48 + 8 * (i % 3), 40 + 4 * i))
    for j, i in enumerate((2, 5, 7)):
        save_png((ref[i] * 0.95 + 0.03).clamp(0, 1), gen_dir / f"g{j}.png", size=(64, 64))
    for j in range(4):
        save_png(new[j], gen_dir / f"n{j}.jpg", size=(50, 30))
    (gen_dir / "corrupt.png").write_bytes(b"\x89PNG broken")
    return gen_dir, ref_dir, tmp_path / "out"


def _check_report(report, out):
    assert len(report.generated) == 7 and report.n_reference == 12
    by_name = {g.rsplit("/", 1)[1]: (m.rsplit("/", 1)[1], s) for g, m, s in
               zip(report.generated, report.matches, report.similarities)}
    for j, i in enumerate((2, 5, 7)):
        match, sim = by_name[f"g{j}.png"]
        assert match == f"r{i:02d}.png" and sim > 0.95
    assert max(by_name[f"n{j}.jpg"][1] for j in range(4)) < 0.9
    assert report.fraction_above == pytest.approx(3 / 7)
    assert report.mean == pytest.approx(sum(report.similarities) / 7)
    assert report.p95 >= report.p90 >= report.p75
    assert [p.rsplit("/", 1)[1] for p, _ in report.skipped] == ["corrupt.png"]
    assert {report.generated[i].rsplit("/", 1)[1] for i in report.worst(3)} == {"g0.png", "g1.png", "g2.png"}
    saved = json.loads((out / "report.json").read_text())
    assert saved["fraction_above"] == report.fraction_above and saved["skipped"][0][0].endswith("corrupt.png")
    rows = (out / "matches.csv").read_text().strip().splitlines()
    assert len(rows) == 8 and sum(r.endswith(",1") for r in rows[1:]) == 3
    from PIL import Image

    with Image.open(out / "worst_pairs.png") as grid:
        assert grid.size == (256, 3 * (128 + 16))


def test_scan_folders_mixed_sizes_and_unreadable(folders):
    gen_dir, ref_dir, out = folders
    with pytest.warns(UserWarning, match="corrupt.png"):
        report = scan(gen_dir, ref_dir, PixelDescriptor(), threshold=0.95, out=out, worst=3, progress=False)
    _check_report(report, out)
    assert "7 generated vs 12 reference" in report.summary() and "42.9% >= 0.95" in report.summary()


def test_scan_against_saved_memmapped_index(folders, tmp_path):
    gen_dir, ref_dir, out = folders
    build_index(ref_dir, PixelDescriptor(), progress=False).save(tmp_path / "idx", dtype="float16")
    index = EmbeddingIndex.load(tmp_path / "idx")
    with pytest.warns(UserWarning):
        report = scan(gen_dir, index, PixelDescriptor(), threshold=0.95, out=out, worst=3, progress=False)
    _check_report(report, out)


def test_scan_tensors_and_errors():
    ref = smooth_images(5, 32, seed=3)
    gen = torch.cat([ref[[4, 0]], smooth_images(1, 32, seed=4)])
    report = scan(gen, ref, PixelDescriptor(), threshold=0.99, progress=False)
    assert report.match_indices[:2] == [4, 0] and report.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert report.matches[0] == "reference[4]" and report.fraction_above == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no readable reference"):
        scan(gen, ref[:0], PixelDescriptor(), progress=False)
    idx = build_index(ref, PixelDescriptor(scales=(2,)), progress=False)
    other = PixelDescriptor(scales=(2,))
    other.name = "other"
    with pytest.raises(ValueError, match="descriptor"):
        scan(gen, idx, other, progress=False)


def test_cli_scan_and_index(folders, tmp_path, capsys):
    gen_dir, ref_dir, out = folders
    assert main(["replication", "index", "--images", str(ref_dir), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    with pytest.warns(UserWarning):
        rc = main(["replication", "scan", "--generated", str(gen_dir), "--reference-index", str(tmp_path / "idx"),
                   "--out", str(out), "--threshold", "0.95", "--worst", "3", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "42.9% >= 0.95" in text and "skipped" in text and "corrupt.png" in text
    saved = json.loads((out / "report.json").read_text())
    assert saved["fraction_above"] == pytest.approx(3 / 7) and (out / "worst_pairs.png").is_file()


def test_add_parser_hooks_into_a_parent_cli():
    import argparse

    parser = argparse.ArgumentParser(prog="osmos")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["replication", "scan", "--generated", "g", "--reference", "r", "--out", "o"])
    assert args.threshold == 0.5 and args.descriptor == "pixels" and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["replication", "scan", "--generated", "g", "--out", "o"])  # no reference
