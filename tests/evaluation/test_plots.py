"""Tests for pneumo.evaluation.plots: each figure is written as a real, sanely sized PNG,
figures are closed, and the gallery copes with few (or no) errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from pneumo.evaluation.metrics import binary_metrics, confusion_counts
from pneumo.evaluation.plots import (gallery_figure, plot_confusion, plot_gallery, plot_pr, plot_reliability,
                                     plot_roc, plot_score_histogram, score_histogram_figure, to_nhwc)
from pneumo.evaluation.report import pick_examples

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _data(n_pos: int = 120, n_neg: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0.0, 1.0)
    return y, p


def _assert_png(path: Path, min_bytes: int = 5_000) -> tuple[int, int]:
    """Check the file is a valid PNG of sane pixel size; return (width, height)."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > min_bytes
    with Image.open(path) as img:
        img.verify()  # raises on a truncated/corrupt file
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
    assert 300 <= width <= 4000 and 300 <= height <= 4000, (width, height)
    assert plt.get_fignums() == []  # the function closed its figure
    return width, height


def _images(n: int, layout: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = {"hw": (n, 32, 32), "hwc": (n, 32, 32, 3), "chw": (n, 3, 32, 32)}[layout]
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_curve_plots(tmp_path: Path) -> None:
    y, p = _data()
    for fn, name in ((plot_roc, "roc.png"), (plot_pr, "pr.png"),
                     (plot_score_histogram, "hist.png")):
        out = fn(y, p, 0.5, tmp_path / "figs" / name)  # creates missing folders
        assert out == tmp_path / "figs" / name
        _assert_png(out)


def test_pr_plot_without_positive_predictions(tmp_path: Path) -> None:
    # threshold above every score: PPV is NaN, the operating point is skipped
    y, p = _data()
    assert np.isnan(binary_metrics(y, p, 1.01)["ppv"])
    _assert_png(plot_pr(y, p, 1.01, tmp_path / "pr.png"))


def test_confusion_plot(tmp_path: Path) -> None:
    y, p = _data()
    cm = confusion_counts(y, p >= 0.5)
    _assert_png(plot_confusion(**cm, path=tmp_path / "cm.png"))
    # an empty true class (row sum 0) must not crash the normalised panel
    _assert_png(plot_confusion(tp=10, fp=0, tn=0, fn=2, path=tmp_path / "cm0.png"))


def test_reliability_plot(tmp_path: Path) -> None:
    y, p = _data()
    _assert_png(plot_reliability(y, p, tmp_path / "rel.png"))
    _assert_png(plot_reliability(y, p, tmp_path / "rel15.png", n_bins=15))


@pytest.mark.parametrize("layout", ["hw", "hwc", "chw"])
def test_gallery_layouts(tmp_path: Path, layout: str) -> None:
    y, p = _data(n_pos=30, n_neg=20)
    chosen = pick_examples(y, p, 0.5, 16)
    out = plot_gallery(_images(50, layout)[chosen], y[chosen], p[chosen], 0.5, tmp_path / f"g_{layout}.png")
    _assert_png(out)


def test_gallery_title_counts_every_error_of_the_set(tmp_path: Path) -> None:
    y = np.r_[np.ones(20, dtype=int), np.zeros(20, dtype=int)]
    p = np.r_[np.full(13, 0.9), np.full(7, 0.2), np.full(13, 0.1), np.full(7, 0.7)]  # 14 errors
    chosen = pick_examples(y, p, 0.5, 16)
    assert len(chosen) == 16 and ((p[chosen] >= 0.5) != y[chosen]).sum() == 8  # half the slots
    fig = gallery_figure(_images(40, "hw")[chosen], y[chosen], p[chosen], 0.5, errors_total=14)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert fig._suptitle.get_text().startswith("Most confident errors (8 of 14) and correct predictions (8)")
    plt.close(fig)
    # Every tile shows P(PNEUMONIA), the number predictions.csv holds, for errors and correct cases alike.
    assert len(titles) == 16 and all("P(PNEUMONIA) = " in t for t in titles)
    assert "ERROR: true PNEUMONIA\nP(PNEUMONIA) = 0.20 -> NORMAL" in titles
    assert "ERROR: true NORMAL\nP(PNEUMONIA) = 0.70 -> PNEUMONIA" in titles  # not "70% NORMAL"-style confidence
    assert "correct: true PNEUMONIA\nP(PNEUMONIA) = 0.90 -> PNEUMONIA" in titles


def test_gallery_with_fewer_errors_than_slots(tmp_path: Path) -> None:
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    p = np.r_[np.full(9, 0.9), 0.2, np.full(9, 0.1), 0.7]  # exactly 2 errors
    chosen = pick_examples(y, p, 0.5, 16)
    assert ((p[chosen] >= 0.5) != y[chosen]).sum() == 2 and len(chosen) == 16
    _assert_png(plot_gallery(_images(20, "hw")[chosen], y[chosen], p[chosen], 0.5, tmp_path / "few.png"))
    # no errors at all, and fewer images than slots
    keep = [0, 1, 2, 10, 11, 12]
    chosen = pick_examples(y[keep], p[keep], 0.5, 16)
    assert len(chosen) == 6
    _assert_png(plot_gallery(_images(6, "hw")[chosen], y[keep][chosen], p[keep][chosen], 0.5, tmp_path / "none.png"))


def test_gallery_rejects_mismatched_inputs(tmp_path: Path) -> None:
    y, p = _data(n_pos=5, n_neg=5)
    with pytest.raises(ValueError, match="images"):
        plot_gallery(_images(7, "hw"), y, p, 0.5, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        plot_gallery(np.zeros((10, 4, 8, 8, 1), np.uint8), y, p, 0.5, tmp_path / "bad.png")


def test_histogram_counts_have_whole_number_ticks() -> None:
    fig = score_histogram_figure([0, 1, 1], [0.2, 0.6, 0.9], 0.5)
    ticks = fig.axes[0].get_yticks()
    plt.close(fig)
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_to_nhwc_layouts() -> None:
    chw = _images(2, "chw")
    assert to_nhwc(chw).shape == (2, 32, 32, 3)
    assert np.array_equal(to_nhwc(chw)[1, 5, 7], chw[1, :, 5, 7])
    assert to_nhwc(_images(2, "hwc")).shape == (2, 32, 32, 3)
    assert to_nhwc(_images(2, "hw")).shape == (2, 32, 32)
