"""The report on degenerate labelled sets: one class, one image, equal scores, a class with one image.

Each shape is checked against the rules of `pneumo.evaluation.definedness`: exactly the metrics that are
not defined are null with their reason, every other value equals `binary_metrics`, intervals are given
unless the bootstrap cannot vary the metric, the JSON is valid, the table says 'not defined (...)', and
the figures that need both classes are left out and named."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from pneumo.evaluation import report as report_pages
from pneumo.evaluation.definedness import json_safe
from pneumo.evaluation.metrics import (METRIC_KEYS, binary_metrics, clinical_report, defined_metrics,
                                       undefined_reasons)
from pneumo.evaluation.plots import plot_gallery, plot_pr, plot_reliability, plot_roc, plot_score_histogram
from pneumo.evaluation.report_text import format_table

ONLY_PNEUMONIA, ONLY_NORMAL = "only PNEUMONIA in this set", "only NORMAL in this set"
BOTH = ("balanced_accuracy", "auroc", "auprc")
ONE_IMAGE = "one image: every bootstrap resample is that image"

# name: (labels, scores, threshold, {undefined key: reason}, {key without interval: reason})
SHAPES = {
    "all_pneumonia": ([1] * 6, [0.9, 0.8, 0.3, 0.7, 0.6, 0.95], 0.5,
                      {key: ONLY_PNEUMONIA for key in ("specificity", *BOTH)}, {}),
    "all_normal": ([0] * 6, [0.1, 0.2, 0.6, 0.3, 0.4, 0.05], 0.5,
                   {key: ONLY_NORMAL for key in ("sensitivity", "f1", *BOTH)}, {}),
    "one_image": ([1], [0.7], 0.5,
                  {**{key: ONLY_PNEUMONIA for key in ("specificity", *BOTH)},
                   "npv": "no image predicted NORMAL at threshold 0.500"},
                  {key: ONE_IMAGE for key in ("accuracy", "sensitivity", "ppv", "f1", "brier", "ece")}),
    "equal_scores": ([1, 0, 1, 0, 0], [0.3] * 5, 0.5,
                     {"ppv": "no image predicted PNEUMONIA at threshold 0.500"}, {}),
    "single_normal": ([0] + [1] * 7, [0.2, 0.9, 0.8, 0.4, 0.7, 0.6, 0.95, 0.55], 0.5,
                      {}, {"specificity": "one NORMAL image: every bootstrap resample holds the same one"}),
    "one_per_class": ([0, 1], [0.3, 0.8], 0.5, {},
                      {key: "one image per class: every bootstrap resample is the same set"
                       for key in METRIC_KEYS if key not in ("sensitivity", "specificity")}
                      | {"sensitivity": "one PNEUMONIA image: every bootstrap resample holds the same one",
                         "specificity": "one NORMAL image: every bootstrap resample holds the same one"}),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_reports_exactly_the_defined_metrics(shape: str) -> None:
    labels, scores, threshold, undefined, no_interval = SHAPES[shape]
    report = clinical_report(labels, scores, threshold, "fixed", n_resamples=300, seed=0)
    point = binary_metrics(labels, scores, threshold)
    for key in METRIC_KEYS:
        entry = report["metrics"][key]
        if key in undefined:
            assert entry == {"value": None, "ci95": None, "reason": undefined[key]}, key
        elif key in no_interval:
            assert entry == {"value": point[key], "ci95": None, "ci_reason": no_interval[key]}, key
        else:
            lo, hi = entry["ci95"]
            assert entry["value"] == point[key] and lo - 1e-12 <= point[key] <= hi + 1e-12, key
    assert undefined_reasons(labels, scores, threshold) == undefined
    assert {k for k, v in defined_metrics(labels, scores, threshold).items() if v is None} == set(undefined)
    json.dumps(report, allow_nan=False)  # raises on NaN: the payload is valid JSON


def test_all_pneumonia_reports_sensitivity_and_ppv_one_and_an_interval_that_varies() -> None:
    report = clinical_report([1] * 6, [0.9, 0.8, 0.3, 0.7, 0.6, 0.95], 0.5, "fixed", n_resamples=500)
    sensitivity = report["metrics"]["sensitivity"]
    assert sensitivity["value"] == pytest.approx(5 / 6)
    assert sensitivity["ci95"][0] < 5 / 6 and sensitivity["ci95"][1] == 1.0
    assert report["metrics"]["ppv"] == {"value": 1.0, "ci95": [1.0, 1.0]}
    assert report["metrics"]["npv"]["value"] == 0.0  # the one image called NORMAL is a miss
    assert report["metrics"]["auprc"]["value"] is None  # 1 whatever the model: not reported as a figure
    assert report["notes"] == [f"{ONLY_PNEUMONIA}: the bootstrap resamples the PNEUMONIA images alone; the "
                               f"metrics that need both classes are not defined"]


def _full_report(labels, scores, threshold: float = 0.5) -> dict:
    """What run.py assembles around clinical_report, with a NaN in the checkpoint's validation figures."""
    report = clinical_report(labels, scores, threshold, "sensitivity", n_resamples=200)
    report["at_0.5"] = defined_metrics(labels, scores, 0.5)
    report["at_0.5_not_defined"] = undefined_reasons(labels, scores, 0.5)
    report["data"] = {"name": "ward", "source": "/sets/ward/labels.csv", "root": "/sets/ward/images",
                      "split": "all", "n_images": len(labels), "external": True, "training_data": {"name": "kaggle"}}
    validation = {key: 0.8 for key in METRIC_KEYS} | {"npv": math.nan}
    report["training_validation"] = {"n_images": 11, "at_threshold": validation}
    report["figures_left_out"] = report_pages.figures_left_out(np.asarray(labels))
    return json_safe(report)


def test_table_says_not_defined_with_the_reason_and_prints_no_nan() -> None:
    report = _full_report([1] * 6, [0.9, 0.8, 0.3, 0.7, 0.6, 0.95])
    table = format_table(report)
    lines = table.splitlines()
    assert "Specificity              not defined (only PNEUMONIA in this set)" in lines
    assert "AUROC                    not defined (only PNEUMONIA in this set)" in lines
    sensitivity = next(line for line in lines if line.startswith("Sensitivity (recall)"))
    assert "0.833  [" in sensitivity
    assert "nan" not in table.lower()
    assert "Note: only PNEUMONIA in this set: the bootstrap resamples the PNEUMONIA images alone" in table
    assert "Figures left out: roc.png (the ROC curve needs both classes; only PNEUMONIA in this set)" in table
    comparison = table[table.index("training validation (kaggle"):].splitlines()
    auroc = next(line for line in comparison if line.startswith("AUROC"))
    assert auroc.split() == ["AUROC", "0.800", "not", "defined"]  # no change column without a value
    sensitivity = next(line for line in comparison if line.startswith("Sensitivity"))
    assert sensitivity.split() == ["Sensitivity", "0.800", "0.833", "+0.033"]


def test_table_marks_a_missing_interval_and_a_figure_undefined_at_half_only() -> None:
    # One image scored 0.7, operating threshold 0.8: PPV undefined at 0.8, defined (1.0) at 0.5.
    report = _full_report([1], [0.7], threshold=0.8)
    table = format_table(report)
    lines = table.splitlines()
    ppv = next(line for line in lines if line.startswith("Precision (PPV)"))
    assert ppv == "Precision (PPV)          not defined (no image predicted PNEUMONIA at threshold 0.800); at 0.5: 1.000"
    accuracy = next(line for line in lines if line.startswith("Accuracy"))
    assert accuracy.split()[1:] == ["0.000", "no", "interval", "1.000"]
    assert any(line.strip().startswith(f"no interval: {ONE_IMAGE} (Accuracy") for line in lines)
    npv = next(line for line in lines if line.startswith("NPV"))
    assert npv.split()[1:] == ["0.000", "no", "interval", "n/d"]  # 0 at 0.8 (a miss); nothing called NORMAL at 0.5
    assert any("n/d at 0.5: not defined, no image predicted NORMAL at threshold 0.500 (NPV)" in line
               for line in lines)


def test_json_safe_turns_every_nan_into_null_and_numpy_into_plain_types() -> None:
    value = json_safe({"a": np.float32("nan"), "b": [1.0, math.inf, np.int64(3)], "c": (np.float64(0.5),),
                       "d": "text", "e": None})
    assert value == {"a": None, "b": [1.0, None, 3], "c": [0.5], "d": "text", "e": None}
    assert type(value["b"][2]) is int and type(value["c"][0]) is float


def _png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 2_000
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_one_class_figures_leave_out_the_curves_and_the_page_says_why(tmp_path: Path) -> None:
    labels, probs = np.zeros(5, dtype=int), np.array([0.1, 0.2, 0.6, 0.3, 0.4])
    left_out = report_pages.figures_left_out(labels)
    assert left_out == {"roc.png": f"the ROC curve needs both classes; {ONLY_NORMAL}",
                        "pr.png": f"the precision-recall curve needs both classes; {ONLY_NORMAL}"}
    index = report_pages.pick_examples(labels, probs, 0.5, 4)
    images = np.random.default_rng(0).integers(0, 256, size=(len(index), 32, 32), dtype=np.uint8)
    written = report_pages.write_figures(tmp_path, labels, probs, 0.5, {"tp": 0, "fp": 1, "tn": 4, "fn": 0},
                                         images, index)
    assert sorted(p.name for p in written) == ["confusion.png", "gallery.png", "reliability.png",
                                               "score_histogram.png"]
    for path in written:
        _png_ok(path)
    assert not (tmp_path / "roc.png").exists() and plt.get_fignums() == []
    report = _full_report(labels.tolist(), probs.tolist())
    page = report_pages.write_markdown(tmp_path, report | {"checkpoint": {"path": "m.ckpt", "train_run": "r"}},
                                       format_table(report)).read_text()
    assert "- ROC curve, operating point marked: not drawn, the ROC curve needs both classes; only NORMAL" in page
    assert "(roc.png)" not in page and "(score_histogram.png)" in page
    assert f"not defined ({ONLY_NORMAL})" in page
    assert report_pages.figures_left_out(np.array([0, 1])) == {}


@pytest.mark.parametrize("plot", [plot_roc, plot_pr])
@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_the_curves_refuse_one_class_clearly(tmp_path: Path, plot, labels) -> None:
    with pytest.raises(ValueError, match="needs both classes in y_true, but it only contains"):
        plot(labels, [0.2, 0.5, 0.9], 0.5, tmp_path / "curve.png")
    assert not (tmp_path / "curve.png").exists()


def test_the_other_figures_draw_a_single_image(tmp_path: Path) -> None:
    _png_ok(plot_score_histogram([1], [0.7], 0.5, tmp_path / "hist.png"))
    _png_ok(plot_reliability([1], [0.7], tmp_path / "reliability.png"))
    image = np.full((1, 32, 32), 128, dtype=np.uint8)
    _png_ok(plot_gallery(image, [1], [0.7], 0.5, tmp_path / "gallery.png"))
    assert plt.get_fignums() == []
