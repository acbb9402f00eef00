"""Shared test fixtures. The published-model fixtures live in ``../shared`` beside the repo
(override with MOSAIC_SHARED); tests that need them skip, saying why, when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOSAIC_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not present (the published model's fixtures live in ../shared)")
    return path


@pytest.fixture
def parity_npz() -> Path:
    return shared_file("fixtures/parity_tiny.npz")


@pytest.fixture
def parity_pt() -> Path:
    return shared_file("fixtures/parity_tiny.pt")
