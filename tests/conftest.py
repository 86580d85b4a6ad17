"""Shared fixtures: the reference data beside the repository (development and CI only)."""

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "reference-data"
OSIPI = SHARED / "osipi"


@pytest.fixture(scope="session")
def osipi_dir():
    if not OSIPI.is_dir():
        pytest.skip(f"OSIPI reference data not found at {OSIPI} (it sits beside the repository in CI)")
    return OSIPI


@pytest.fixture(scope="session")
def abdomen_dir():
    path = SHARED / "abdomen"
    if not path.is_dir():
        pytest.skip(f"abdominal reference scans not found at {path} (they sit beside the repository in CI)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
