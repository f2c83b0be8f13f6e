"""Per-image attributes for subgroup results: parsing and banding, NIH-style table columns, DICOM headers
(the demo table's), and the message for data sets that cannot give them."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from pneumo.config import CONFIG_DIR
from pneumo.data.attributes import (UNKNOWN, age_band, age_years, attribute_map, available_subgroups, group_order,
                                    group_values, sex_group, subgroups_problem, view_group)
from pneumo.demo.synthetic_table import IMAGES_DIR, plan_table


# ---- parsing and bands ------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, years", [
    ("045Y", 45.0), ("006M", 0.5), ("002W", 14 / 365.25), ("003D", 3 / 365.25), ("120Y", 120.0),
    ("58", 58.0), (" 58 ", 58.0), ("17.5", 17.5), (58, 58.0), (0, 0.0)])
def test_ages_are_read_in_years_from_tables_and_dicom_age_strings(raw, years):
    assert age_years(raw) == pytest.approx(years)


@pytest.mark.parametrize("raw", [None, "", "abc", "-5", "45X", "121Y", "413", 148, float("nan")])
def test_missing_unreadable_and_impossible_ages_are_none(raw):
    assert age_years(raw) is None
    assert age_band(raw) == UNKNOWN


@pytest.mark.parametrize("raw, band", [
    ("002W", "0-17"), ("006M", "0-17"), ("003D", "0-17"), (0, "0-17"), ("17.9", "0-17"), ("017Y", "0-17"),
    (18, "18-39"), ("039Y", "18-39"), (40, "40-59"), ("59", "40-59"), (60, "60-79"), (79, "60-79"),
    (80, "80+"), ("120Y", "80+"), ("121Y", UNKNOWN), (411, UNKNOWN)])
def test_age_bands_cover_children_to_80_plus(raw, band):
    assert age_band(raw) == band


def test_sex_and_view_groups():
    assert [sex_group(v) for v in ("M", "f", "Female", " male ", "O", "", None, "X")] == \
        ["M", "F", "F", "M", "O", UNKNOWN, UNKNOWN, UNKNOWN]
    assert [view_group(v) for v in ("PA", " ap", "LL", "", None)] == ["PA", "AP", "LL", UNKNOWN, UNKNOWN]


def test_groups_come_in_reading_order_with_unknown_last():
    assert group_order("age_band", ["80+", UNKNOWN, "18-39", "0-17"]) == ["0-17", "18-39", "80+", UNKNOWN]
    assert group_order("sex", [UNKNOWN, "M", "F"]) == ["F", "M", UNKNOWN]
    assert group_order("view", ["PA", UNKNOWN, "AP"]) == ["AP", "PA", UNKNOWN]
    grouped = group_values({"sex": ["F", None], "age": ["130Y", "006M"], "view": ["AP", ""]},
                           ["sex", "age_band", "view"])
    assert grouped == {"sex": ["F", UNKNOWN], "age_band": [UNKNOWN, "0-17"], "view": ["AP", UNKNOWN]}
    with pytest.raises(KeyError, match="data.attributes.age"):
        group_values({"sex": ["F"]}, ["age_band"])


def test_the_attribute_mapping_is_checked():
    assert attribute_map(None) == {} and attribute_map({"from": "table", "sex": None}) == {}
    assert attribute_map({"sex": "Gender", "age": ""}) == {"from": "table", "sex": "Gender"}
    assert available_subgroups({"from": "dicom", "age": "PatientAge", "view": "ViewPosition"}) == ["age_band", "view"]
    with pytest.raises(ValueError, match="data.attributes has unknown key.*'race'"):
        attribute_map({"race": "Race"})
    with pytest.raises(ValueError, match="data.attributes.from='header'"):
        attribute_map({"from": "header", "sex": "PatientSex"})


# ---- where the values come from ---------------------------------------------------------------------
def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def _nih_like(folder: Path) -> tuple[Path, Path, list[dict[str, str]]]:
    """Data_Entry_2017.csv's columns and 6 PNGs in NIH's images_001/images/ subfolder."""
    images = folder / "images"
    (images / "images_001" / "images").mkdir(parents=True)
    rows = [("00000001_000.png", "Pneumonia", "1", "058", "M", "PA"),
            ("00000001_001.png", "No Finding", "1", "059", "M", "AP"),
            ("00000002_000.png", "No Finding", "2", "411", "F", "PA"),   # NIH's impossible ages: unknown
            ("00000003_000.png", "Pneumonia|Edema", "3", "7", "F", "AP"),
            ("00000004_000.png", "No Finding", "4", "", "", "PA"),      # missing values: unknown
            ("00000005_000.png", "No Finding", "5", "80", "F", "")]
    columns = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
    table = [dict(zip(columns, row)) for row in rows]
    for row in table:
        Image.fromarray(np.full((32, 32), 100, np.uint8)).save(images / "images_001" / "images" / row["Image Index"])
    with (folder / "Data_Entry_2017.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    return folder / "Data_Entry_2017.csv", images, table


def test_nih_columns_give_each_image_its_groups(tmp_path):
    """The nih_pneumonia preset's mapping, on a table in NIH's layout (images in subfolders, found by name)."""
    csv_path, images, table = _nih_like(tmp_path)
    cfg = _compose("data=nih_pneumonia", f"data.csv={csv_path}", f"data.image_dir={images}",
                   "data.official_split=null", f"cache_dir={tmp_path}/cache", f"output_dir={tmp_path}/out")
    source = instantiate(cfg.data).source
    files = list(reversed(source.table().files))  # any order: values follow the files
    by_name = {row["Image Index"]: row for row in table}
    raw = source.attributes(files)
    assert raw["sex"] == [by_name[Path(f).name]["Patient Gender"] or None for f in files]
    groups = dict(zip((Path(f).name for f in files), zip(*group_values(raw, ["sex", "age_band", "view"]).values())))
    assert groups == {"00000001_000.png": ("M", "40-59", "PA"), "00000001_001.png": ("M", "40-59", "AP"),
                      "00000002_000.png": ("F", UNKNOWN, "PA"), "00000003_000.png": ("F", "0-17", "AP"),
                      "00000004_000.png": (UNKNOWN, UNKNOWN, "PA"), "00000005_000.png": ("F", "80+", UNKNOWN)}


def test_a_mapped_column_missing_from_the_csv_names_the_key(tmp_path):
    csv_path, images, _ = _nih_like(tmp_path)
    cfg = _compose("data=nih_pneumonia", f"data.csv={csv_path}", f"data.image_dir={images}",
                   "data.official_split=null", "data.attributes.sex=Sex", f"cache_dir={tmp_path}/cache",
                   f"output_dir={tmp_path}/out")
    source = instantiate(cfg.data).source
    with pytest.raises(ValueError, match="no column 'Sex' \\(data.attributes.sex\\).*'Patient Gender'"):
        source.attributes(source.table().files)


def test_the_demo_table_carries_sex_age_and_view_in_its_dicom_headers(tmp_path):
    """data=synthetic_table reads PatientSex, PatientAge, ViewPosition from each file's header; absent
    fields and a file that is not DICOM are None (the group unknown)."""
    cfg = _compose("data=synthetic_table", "data.synthetic_table.n_images=21", "+data.synthetic_table.min_side=64",
                   "+data.synthetic_table.max_side=96", f"cache_dir={tmp_path}/cache", f"output_dir={tmp_path}/out")
    source = instantiate(cfg.data).source
    source.prepare()
    files = source.table().files
    plan = {image.patient_id: image for image in plan_table(0, 21)}
    raw = source.attributes(files)
    for index, file in enumerate(files):
        image = plan[Path(file).stem]
        header = pydicom.dcmread(file, stop_before_pixels=True)
        assert raw["sex"][index] == image.sex and raw["age"][index] == image.age
        assert raw["view"][index] == header.ViewPosition in ("PA", "AP")
    assert {None, "F", "M"} >= set(raw["sex"]) and any(age and age.endswith("Y") for age in raw["age"])
    png = tmp_path / "cache" / "synthetic_table" / IMAGES_DIR / "stray.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    assert source.attributes([str(png)]) == {"sex": [None], "age": [None], "view": [None]}


def test_the_demo_table_plan_holds_missing_infant_and_impossible_ages():
    plan = plan_table(0, 240)
    ages = [image.age for image in plan]
    assert any(age is None for age in ages) and any(image.sex is None for image in plan)
    assert any(age and age[-1] in "DWM" for age in ages)                    # infants in days, weeks, months
    assert any(age and age.endswith("Y") and int(age[:-1]) > 120 for age in ages)  # data errors: unknown
    assert {age_band(age) for age in ages} == {"0-17", "18-39", "40-59", "60-79", "80+", UNKNOWN}


# ---- the message for data sets without them ---------------------------------------------------------
def test_a_kaggle_folder_has_no_subgroups_and_the_message_says_so(tmp_path):
    cfg = _compose("data=synthetic", f"cache_dir={tmp_path}/cache")
    data = {"name": None, "root": str(tmp_path / "cache" / "synthetic")}
    message = subgroups_problem(["sex"], data)
    assert "the data set synthetic" in message and "it has: none" in message and "Kaggle" in message
    assert "data=nih_pneumonia" in message and "leave out subgroups=" in message
    assert "attributes" not in cfg.data  # the folder source takes none


def test_a_table_without_an_age_column_cannot_band_ages():
    data = {"name": "hospital", "csv": "/x/labels.csv", "attributes": {"from": "table", "sex": "Gender"}}
    assert subgroups_problem(["sex"], data) is None
    message = subgroups_problem(["sex", "age_band"], data)
    assert "hospital" in message and "no age_band" in message and "data.attributes.age" in message
    assert "subgroupings it has: sex" in message


def test_an_unknown_subgrouping_lists_the_known_ones():
    message = subgroups_problem(["race"], {"attributes": {"sex": "Gender"}})
    assert "race" in message and "sex, age_band, view" in message
