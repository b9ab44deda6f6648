"""core/search/plot.py: the front's plot, on the small synthetic results table of results_table.py."""

from __future__ import annotations

import pytest

from alambic.errors import AlambicError
from alambic.search.front import load_results, mark_front
from alambic.search.plot import front_figure, plot_front


def test_plot_front_writes_a_png(run_dir, tmp_path):
    df = mark_front(load_results(run_dir))
    path = plot_front(df, tmp_path / "plots" / "front.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    with pytest.raises(AlambicError, match="nothing to plot"):
        plot_front(df[df["status"] == "failed"], tmp_path / "none.png")


def test_the_plot_shows_validation_with_error_bars_and_test_as_reported(run_dir):
    from matplotlib.container import ErrorbarContainer

    ax = front_figure(mark_front(load_results(run_dir))).axes[0]
    assert "validation accuracy" in ax.get_ylabel() and "standard error" in ax.get_ylabel()
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any("test accuracy (reported only" in label for label in labels)
