"""Every kernel test runs with interpret mode's race detector, and fails on a race."""

import pytest

from pallas_kernels.testing import races_found, reset_race_detection


@pytest.fixture(autouse=True)
def _no_races():
    reset_race_detection()
    yield
    assert not races_found(), "a kernel interpreted by this test raced (GPU interpret mode's detector)"
