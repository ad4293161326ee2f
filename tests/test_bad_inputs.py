"""Malformed point clouds give one-line errors naming the file (no traceback, exit code 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sfd_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "neuralpull" / "tiny.yaml")


def _corpus(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = np.random.default_rng(0).random((500, 3)).astype(np.float32)
    nan = good.copy()
    nan[3, 1] = np.nan
    inf = good.copy()
    inf[7, 0] = np.inf
    cases = {}

    def put(name, writer, expect):
        path = tmp / name
        writer(path)
        cases[name] = (path, expect)

    put("nan.npy", lambda p: np.save(p, nan), "NaN or infinite")
    put("inf.xyz", lambda p: np.savetxt(p, inf), "NaN or infinite")
    put("empty.ply", lambda p: p.write_bytes(b""), "file is empty")
    put("too_few.npy", lambda p: np.save(p, good[:10]), "at least")
    put("flat2d.npy", lambda p: np.save(p, good[:, :2]), "(N, 3)")
    put("garbage.ply", lambda p: p.write_bytes(b"ply\nformat nonsense\n\x00\x01"), "cannot be parsed")
    put("text.xyz", lambda p: p.write_text("1 2 three\n4 5 6\n"), "text point cloud")
    put("wrongkey.npz", lambda p: np.savez(p, foo=good), "no point array")
    put("cloud.las", lambda p: p.write_text("x"), "unsupported file type")
    put("same.npy", lambda p: np.save(p, np.ones((200, 3), np.float32)), "coincide")
    cases["missing.npy"] = (tmp / "missing.npy", "file not found")
    return cases


def test_bad_point_clouds_fail_with_one_line(tmp_path, capsys):
    for name, (path, expect) in _corpus(tmp_path).items():
        code = main(["fit", "--config", TINY, "--data.init_args.path", str(path),
                     "--trainer.default_root_dir", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert err and err[-1].startswith("error: ") and str(path) in err[-1], (name, err[-3:])
        assert expect in err[-1], (name, err[-1])
        assert "Traceback" not in "\n".join(err), name


def test_evaluate_missing_file_is_one_line(tmp_path, capsys):
    code = main(["evaluate", "--pred", str(tmp_path / "nope.ply"), "--gt", str(tmp_path / "gt.ply")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.ply" in err[0] or "gt.ply" in err[0]


def test_export_without_checkpoint_is_one_line(tmp_path, capsys):
    code = main(["export", "--config", TINY, "--ckpt_path", str(tmp_path / "none.ckpt"),
                 "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "none.ckpt" in err[-1]
