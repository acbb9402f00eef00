"""Atomic outputs: the target appears whole or not at all."""

from __future__ import annotations

import pytest

from mosaic_jax.atomic import atomic_path, atomic_write


def test_failed_write_leaves_no_trace_and_keeps_old_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_folder_target_is_replaced_whole(tmp_path):
    target = tmp_path / "store.zarr"
    (target / "stale").mkdir(parents=True)
    with atomic_path(target) as tmp:
        (tmp / "fresh").mkdir(parents=True)
    assert [p.name for p in target.iterdir()] == ["fresh"]
    assert atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x")).read_text() == "x"
