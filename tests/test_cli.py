"""The `osmos` command turns a bad input into one error line and exit status 2."""

from osmos.cli import main


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OSMOS_TRACEBACK", raising=False)
    (tmp_path / "gen").mkdir()
    (tmp_path / "ref").mkdir()
    argv = ["replication", "scan", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("osmos: error: no readable generated images in ") and "Traceback" not in err
    assert main(argv[:2] + ["--generated", str(tmp_path / "missing")] + argv[4:]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_traceback_on_request(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("OSMOS_TRACEBACK", "1")
    (tmp_path / "gen").mkdir()
    with pytest.raises(ValueError, match="no readable generated images"):
        main(["replication", "scan", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path),
              "--out", str(tmp_path / "out"), "--quiet"])
