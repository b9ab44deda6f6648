"""The ``run_dir`` fixture: a run directory holding the synthetic results table of results_table.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.search.results_table import write_results


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path / "artifacts" / "tiny")
