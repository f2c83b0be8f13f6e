"""Subgroup results against hand computations: counts, sensitivity, specificity, AUROC, intervals, flags,
undefined figures with their reason, the printed table and the forest plot."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pneumo.evaluation.definedness import json_safe
from pneumo.evaluation.forest_plot import plot_subgroups
from pneumo.evaluation.metrics import clinical_report
from pneumo.evaluation.subgroups import SUBGROUP_METRICS, subgroup_report, subgroup_table_lines

# 12 images, threshold 0.5. Group F: 4 PNEUMONIA (0.9, 0.8, 0.6, 0.3) and 4 NORMAL (0.7, 0.4, 0.2, 0.1);
# group M: 2 PNEUMONIA (0.55, 0.45) and 1 NORMAL (0.35); group unknown: 1 NORMAL (0.65).
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0])
PROBS = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1, 0.55, 0.45, 0.35, 0.65])
SEX = ["F"] * 8 + ["M"] * 3 + ["unknown"]


@pytest.fixture(scope="module")
def report():
    return subgroup_report(LABELS, PROBS, {"sex": SEX}, 0.5, "fixed", min_size=5, min_class=3, n_resamples=400,
                           seed=1)["sex"]


def test_counts_and_figures_match_a_hand_computation(report):
    assert list(report) == ["F", "M", "unknown"]
    female, male = report["F"], report["M"]
    assert (female["n"], female["positives"], female["negatives"]) == (8, 4, 4)
    assert (male["n"], male["positives"], male["negatives"]) == (3, 2, 1)
    # F: predicted PNEUMONIA at >= 0.5: 0.9, 0.8, 0.6 of the positives; 0.7 of the negatives.
    assert female["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert female["specificity"]["value"] == pytest.approx(3 / 4)
    # AUROC = pairs (positive, negative) ranked right / 16: 0.9 and 0.8 beat all 4, 0.6 beats 3, 0.3 beats 2.
    assert female["auroc"]["value"] == pytest.approx((4 + 4 + 3 + 2) / 16)
    # M: 0.55 called PNEUMONIA, 0.45 not; the NORMAL 0.35 called NORMAL; both positives outrank it.
    assert male["sensitivity"]["value"] == pytest.approx(1 / 2)
    assert male["specificity"]["value"] == pytest.approx(1.0)
    assert male["auroc"]["value"] == pytest.approx(1.0)


def test_intervals_are_the_stratified_bootstrap_of_the_group(report):
    female = report["F"]
    for key in SUBGROUP_METRICS:
        low, high = female[key]["ci95"]
        assert 0 <= low <= female[key]["value"] <= high <= 1 and high > low
    same = clinical_report(LABELS[:8], PROBS[:8], 0.5, "fixed", n_resamples=400, seed=1)["metrics"]
    assert all(female[key]["ci95"] == same[key]["ci95"] for key in SUBGROUP_METRICS)  # reused, not re-derived


def test_small_groups_and_thin_classes_are_flagged_and_undefined_figures_say_why(report):
    female, male, unknown = report["F"], report["M"], report["unknown"]
    assert female["small"] is False and female["flags"] == []  # 8 >= min_size 5, 4 of each class >= min_class 3
    assert male["small"] is True and "3 images < subgroup_min_size=5" in male["flags"]
    assert male["sensitivity"]["flag"] == "2 PNEUMONIA images < subgroup_min_class=3"
    assert male["specificity"]["flag"] == "1 NORMAL image < subgroup_min_class=3"
    assert male["specificity"]["ci95"] is None and "one NORMAL image" in male["specificity"]["ci_reason"]
    assert male["auroc"]["flag"].startswith("1 NORMAL image")  # AUROC rests on the smaller class
    assert unknown["sensitivity"] == {"value": None, "ci95": None, "reason": "only NORMAL in this group"}
    assert unknown["auroc"]["reason"] == "only NORMAL in this group"
    assert unknown["specificity"]["value"] == 0.0  # 0.65 >= 0.5: the one NORMAL image is called PNEUMONIA
    json.dumps(json_safe(report), allow_nan=False)  # metrics.json stays valid JSON


def test_a_grouping_of_the_wrong_length_or_a_bad_minimum_is_refused():
    with pytest.raises(ValueError, match="subgrouping 'sex' has 3 values for 12 images"):
        subgroup_report(LABELS, PROBS, {"sex": ["F", "M", "F"]}, 0.5)
    with pytest.raises(ValueError, match="subgroup_min_size=0"):
        subgroup_report(LABELS, PROBS, {"sex": SEX}, 0.5, min_size=0)


def _full_report(groups: dict) -> dict:
    full = clinical_report(LABELS, PROBS, 0.5, "fixed", n_resamples=200)
    full["subgroups"] = subgroup_report(LABELS, PROBS, groups, 0.5, "fixed", min_size=5, min_class=3,
                                        n_resamples=200)
    full["subgroup_settings"] = {"min_size": 5, "min_class": 3}
    return full


def test_the_printed_table_has_a_row_per_group_with_flags_and_reasons():
    ages = ["0-17", "80+", "0-17", "80+"] * 3
    lines = subgroup_table_lines(_full_report({"sex": SEX, "age_band": ages}))
    text = "\n".join(lines)
    assert "subgroup_min_size=5" in lines[1] and "subgroup_min_class=3" in lines[1]
    rows = {line.split()[0]: line for line in lines[3:] if line and not line.startswith(" ")}
    assert list(rows) == ["overall", "sex=F", "sex=M", "sex=unknown", "age_band=0-17", "age_band=80+"]
    assert rows["sex=F"].split()[1:4] == ["8", "4", "4"] and "0.750 [" in rows["sex=F"] and "!" not in rows["sex=F"]
    assert rows["sex=M"].split()[1] == "!" and "1.000 (no interval)*" in rows["sex=M"]
    assert "n/d" in rows["sex=unknown"]
    assert "n/d: not defined, only NORMAL in this group (sex=unknown sensitivity, sex=unknown auroc)" in text
    assert subgroup_table_lines({"n": {}, "metrics": {}}) == []


def test_the_forest_plot_draws_a_row_per_group(tmp_path):
    full = _full_report({"sex": SEX, "view": ["PA", "AP"] * 6})
    path = plot_subgroups(full["subgroups"], full["metrics"], SUBGROUP_METRICS, tmp_path / "subgroups.png", 5, 3)
    with Image.open(path) as image:
        width, height = image.size
    assert width > 900 and height > 300
    fewer = plot_subgroups({"sex": {"F": full["subgroups"]["sex"]["F"]}}, full["metrics"], SUBGROUP_METRICS,
                           tmp_path / "one.png")
    with Image.open(fewer) as image:
        assert image.size[1] < height  # one row per group: fewer groups, a shorter figure
    with pytest.raises(ValueError, match="no subgroup to plot"):
        plot_subgroups({"sex": {}}, full["metrics"], SUBGROUP_METRICS, tmp_path / "none.png")
