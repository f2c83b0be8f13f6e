"""Tests for pneumo.plots: each figure is written as a real, sanely sized PNG,
figures are closed, and the gallery copes with few (or no) errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from pneumo.metrics import binary_metrics, confusion_counts
from pneumo.plots import (
    _to_nhwc,
    plot_confusion,
    plot_gallery,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_score_histogram,
)

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
    out = plot_gallery(_images(50, layout), y, p, 0.5, tmp_path / f"g_{layout}.png", n=16)
    _assert_png(out)


def test_gallery_with_fewer_errors_than_slots(tmp_path: Path) -> None:
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    p = np.r_[np.full(9, 0.9), 0.2, np.full(9, 0.1), 0.7]  # exactly 2 errors
    assert sum(v for k, v in confusion_counts(y, p >= 0.5).items() if k in ("fp", "fn")) == 2
    _assert_png(plot_gallery(_images(20, "hw"), y, p, 0.5, tmp_path / "few.png", n=16))
    # no errors at all, and fewer images than slots
    _assert_png(plot_gallery(_images(6, "hw"), y[[0, 1, 2, 10, 11, 12]],
                             p[[0, 1, 2, 10, 11, 12]], 0.5, tmp_path / "none.png", n=16))


def test_gallery_rejects_mismatched_inputs(tmp_path: Path) -> None:
    y, p = _data(n_pos=5, n_neg=5)
    with pytest.raises(ValueError, match="images"):
        plot_gallery(_images(7, "hw"), y, p, 0.5, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        plot_gallery(np.zeros((10, 4, 8, 8, 1), np.uint8), y, p, 0.5, tmp_path / "bad.png")


def test_to_nhwc_layouts() -> None:
    chw = _images(2, "chw")
    assert _to_nhwc(chw).shape == (2, 32, 32, 3)
    assert np.array_equal(_to_nhwc(chw)[1, 5, 7], chw[1, :, 5, 7])
    assert _to_nhwc(_images(2, "hwc")).shape == (2, 32, 32, 3)
    assert _to_nhwc(_images(2, "hw")).shape == (2, 32, 32)
