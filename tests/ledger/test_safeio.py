"""Reading an untrusted run directory: paths stay inside, only bounded regular files are read."""

from __future__ import annotations

import os

import pytest

from lightning_zk.ledger import safeio
from lightning_zk.ledger.errors import UnsafePathError


@pytest.fixture
def root(tmp_path):
    run = tmp_path / "run"
    (run / "rounding").mkdir(parents=True)
    (run / "rounding" / "step-00000000.rlog").write_bytes(b"log")
    (tmp_path / "outside.txt").write_text("secret")
    return run


@pytest.mark.parametrize("name", ["../outside.txt", "../../../../etc/passwd", "/etc/hostname",
                                  "/dev/zero", "rounding/../../outside.txt", "C:evil", "a\\b",
                                  "", "nul\x00byte", 5, None])
def test_names_that_leave_or_are_not_paths(root, name):
    with pytest.raises(UnsafePathError):
        safeio.inside(root, name, "field log_file")


def test_symlink_leaving_the_run_is_refused(root, tmp_path):
    (root / "rounding" / "step-00000001.rlog").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(UnsafePathError, match="outside the run directory"):
        safeio.inside(root, "rounding/step-00000001.rlog", "log")
    (root / "linked").symlink_to(tmp_path)  # a directory symlink out, then a normal name under it
    with pytest.raises(UnsafePathError, match="outside the run directory"):
        safeio.inside(root, "linked/outside.txt", "log")
    (root / "zero").symlink_to("/dev/zero")
    with pytest.raises(UnsafePathError):
        safeio.inside(root, "zero", "log")


def test_symlink_staying_inside_is_followed(root):
    (root / "alias.rlog").symlink_to(root / "rounding" / "step-00000000.rlog")
    path = safeio.inside(root, "alias.rlog", "log")
    assert safeio.read_regular(path, "log", 10) == b"log"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_only_regular_files_are_read(root, kind):
    path = root / "thing"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(UnsafePathError, match="FIFO|directory"):  # a FIFO never blocks
        safeio.read_regular(safeio.inside(root, "thing", "x"), "x", 100)
    with pytest.raises(UnsafePathError):
        list(safeio.iter_lines(safeio.inside(root, "thing", "x"), "x", 100))


def test_sizes_are_checked_before_reading(root):
    big = root / "big"
    with open(big, "wb") as handle:
        handle.truncate(1 << 40)  # a sparse terabyte: never allocated
    with pytest.raises(UnsafePathError, match="more than the 1000 bytes"):
        safeio.read_regular(big, "x", 1000)
    (root / "lines").write_bytes(b"short\n" + b"x" * 5000 + b"\n")
    lines = safeio.iter_lines(root / "lines", "x", 100)
    assert next(lines) == (b"short", True)
    with pytest.raises(UnsafePathError, match="line 2 is longer"):
        next(lines)


def test_missing_file(root):
    with pytest.raises(safeio.MissingFileError, match="is missing"):
        safeio.read_regular(root / "nothing", "x", 10)
    assert safeio.regular_size(root / "nothing", "x", 10, missing_ok=True) is None
