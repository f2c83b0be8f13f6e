"""Per-image attributes for subgroup results: sex, age and view, from a label table or DICOM headers.

A model that is good on average can miss pneumonia in children or on bedside (AP) films. To show that,
evaluate.py's `subgroups=[sex,age_band,view]` needs each test image's sex, age and view. Where they come
from is the data config's `data.attributes`:

    attributes: {from: table, sex: Patient Gender, age: Patient Age, view: View Position}   # NIH's CSV columns
    attributes: {from: dicom, sex: PatientSex, age: PatientAge, view: ViewPosition}         # DICOM keywords

`from: table` reads the named columns of data.csv (an image's first row); `from: dicom` reads the named
header fields of each image file (without its pixels). An attribute set to null is not available. The raw
values are then put into groups (:func:`group_values`): sex F / M / O; age in bands 0-17, 18-39, 40-59,
60-79, 80+ (DICOM ages "045Y", "006M", "002W", "003D" and plain numbers are read as years; ages above 120,
such as NIH's few 400-year-olds, are data errors); the view as written (PA, AP, LL, ...). A missing or
unreadable value puts the image in the group "unknown".

Standard library at import (pydicom is imported where DICOM headers are read), so the command-line check
can use `SUBGROUPS` and :func:`subgroups_problem` before torch is imported.
"""
from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["AGE_BANDS", "ATTRIBUTES", "MAX_AGE_YEARS", "SUBGROUPS", "UNKNOWN", "age_band", "age_years",
           "attribute_map", "available_subgroups", "group_order", "group_values", "read_attributes", "sex_group",
           "subgroups_problem", "view_group"]

#: The raw attributes a data config can map (data.attributes.<name>) and where each is read from.
ATTRIBUTES: tuple[str, ...] = ("sex", "age", "view")
#: The subgroupings evaluate.py offers (subgroups=[...]) and the raw attribute each is made from.
SUBGROUPS: dict[str, str] = {"sex": "sex", "age_band": "age", "view": "view"}
SOURCES = ("table", "dicom")
UNKNOWN = "unknown"
#: Lower edges of the age bands, in years; the last band is open ("80+").
AGE_BANDS: tuple[int, ...] = (0, 18, 40, 60, 80)
#: Ages above this (years) are data errors (NIH ChestX-ray14 lists a few patients aged 148-414): unknown.
MAX_AGE_YEARS = 120
_DICOM_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([DWMY]?)$", re.IGNORECASE)
_YEARS_PER_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_SEX = {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M", "O": "O", "OTHER": "O"}
_EXAMPLES = ("data=nih_pneumonia (Data_Entry_2017.csv: Patient Gender, Patient Age, View Position), "
             "data=rsna_pneumonia or data=synthetic_table (DICOM PatientSex, PatientAge, ViewPosition), or any "
             "data=table with data.attributes.sex=COLUMN, data.attributes.age=COLUMN, data.attributes.view=COLUMN")


# ---- the data config's mapping ----------------------------------------------------------------------
def attribute_map(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """`data.attributes` checked: {"from": "table" | "dicom", attribute: column or keyword, ...}, with the
    attributes set to null (or empty) left out; {} for None (the set has no attributes).

    Raises:
        ValueError: an unknown key or `from` value, or a value that is not a string; names data.attributes.KEY.
    """
    if not attributes:
        return {}
    given = dict(attributes)
    unknown = sorted(set(given) - {"from", *ATTRIBUTES})
    if unknown:
        raise ValueError(f"data.attributes has unknown key(s) {unknown}: it takes from ({' or '.join(SOURCES)}) "
                         f"and {', '.join(ATTRIBUTES)} (the column or DICOM keyword holding each)")
    source = given.get("from") or "table"
    if source not in SOURCES:
        raise ValueError(f"data.attributes.from={source!r}: choose 'table' (columns of data.csv) or 'dicom' "
                         f"(header fields of each image file)")
    mapped = {}
    for name in ATTRIBUTES:
        value = given.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise ValueError(f"data.attributes.{name}={value!r}: name the {'column' if source == 'table' else 'DICOM keyword'} "
                             f"holding the {name} as a string, or null when the data set has none")
        mapped[name] = value
    return {"from": source, **mapped} if mapped else {}


def available_subgroups(attributes: Mapping[str, Any] | None) -> list[str]:
    """The subgroupings (of `SUBGROUPS`) a data config's `data.attributes` allows, in SUBGROUPS' order."""
    mapped = attribute_map(attributes)
    return [name for name, raw in SUBGROUPS.items() if raw in mapped]


def subgroups_problem(subgroups: Sequence[str], data: Mapping[str, Any]) -> str | None:
    """The message when `subgroups` (evaluate.py's subgroups=[...]) cannot be made on the data set that
    `data` (a data config as a plain dict) describes, or None when they can.

    `data` needs only its attributes, name, csv and root keys. Never raises: a malformed
    `data.attributes` is said in the message too.
    """
    names = [str(name) for name in subgroups]
    unknown = [name for name in names if name not in SUBGROUPS]
    if unknown:
        return (f"subgroups: unknown subgrouping(s) {', '.join(unknown)}; the known ones are "
                f"{', '.join(SUBGROUPS)}. Fix: subgroups=[{','.join(SUBGROUPS)}]")
    try:
        available = available_subgroups(data.get("attributes"))
    except ValueError as error:
        return str(error)
    missing = [name for name in names if name not in available]
    if not missing:
        return None
    location = data.get("csv") or data.get("root") or "?"
    name = data.get("name") or Path(str(location)).name
    has = ", ".join(available) if available else "none"
    head = f"subgroups=[{','.join(names)}]: the data set {name}"
    if not data.get("csv"):
        return (f"{head}, a Kaggle-layout image folder at {location}, has no per-image attributes (it has: none; "
                f"its folders give only the class and the file names the patient). Data sets with sex, age and "
                f"view: {_EXAMPLES}. Fix: evaluate on such data (data=...), or leave out subgroups=")
    needs = "; ".join(f"{group} needs data.attributes.{SUBGROUPS[group]}" for group in missing)
    return (f"{head}, a label table at {location}, has no {', '.join(missing)} per image (the subgroupings it "
            f"has: {has}). {needs}: the CSV column (data.attributes.from=table) or DICOM header field "
            f"(data.attributes.from=dicom) holding it. Data sets with them: {_EXAMPLES}. Fix: set data.attributes, "
            f"or leave out subgroups=")


# ---- reading the raw values -------------------------------------------------------------------------
def read_attributes(attributes: Mapping[str, Any], files: Sequence[str], *, csv_path: str | Path | None = None,
                    image_dir: str | Path | None = None, id_column: str | None = None,
                    file_template: str = "{id}") -> dict[str, list[str | None]]:
    """The raw value of each mapped attribute for each of `files` (None where missing).

    Args:
        attributes: `attribute_map`'s result (or `data.attributes` itself).
        files: image paths as the data module lists them.
        csv_path, image_dir, id_column, file_template: the table's settings (data.csv, ...), for `from: table`.

    Returns:
        {attribute: [value or None, one per file]} for the attributes mapped; {} when none is.
    Raises:
        ValueError: a mapped column is not in the CSV (names data.attributes.KEY and the columns there).
    """
    mapped = attribute_map(attributes)
    if not mapped:
        return {}
    keys = {name: mapped[name] for name in ATTRIBUTES if name in mapped}
    if mapped["from"] == "dicom":
        return _dicom_attributes(keys, files)
    if csv_path is None or image_dir is None or id_column is None:
        raise ValueError("data.attributes.from=table needs the label table (data.csv, data.image_dir, "
                         "data.id_column); for DICOM header fields use data.attributes.from=dicom")
    return _table_attributes(keys, files, Path(csv_path), Path(image_dir), id_column, file_template)


def _table_attributes(columns: dict[str, str], files: Sequence[str], csv_path: Path, image_dir: Path,
                      id_column: str, file_template: str) -> dict[str, list[str | None]]:
    """Columns of the CSV row of each file: the image's first row, found by its path (image_dir / template)
    or, as `pneumo.data.tables` finds files in subfolders, by its file name."""
    from pneumo.data.tables import fill_template

    by_path: dict[str, dict[str, str]] = {}
    by_name: dict[str, dict[str, str]] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name for name in (reader.fieldnames or []) if name is not None]
        for name, column in columns.items():
            if column not in header:
                raise ValueError(f"{csv_path} has no column {column!r} (data.attributes.{name}); its columns are: "
                                 f"{', '.join(repr(c) for c in header)}. Set data.attributes.{name} to one of them, "
                                 f"or to null when the table has no {name}")
        for raw in reader:
            row = {key: (value or "").strip() for key, value in raw.items() if key is not None}
            image_id = row.get(id_column, "")
            if not image_id:
                continue
            relative = fill_template(file_template, {**row, "id": image_id})
            values = {name: row.get(column, "") for name, column in columns.items()}
            by_path.setdefault(str(image_dir / relative), values)
            by_name.setdefault(Path(relative).name, values)
    out: dict[str, list[str | None]] = {name: [] for name in columns}
    for file in files:
        values = by_path.get(str(file)) or by_name.get(Path(file).name) or {}
        for name in columns:
            out[name].append(values.get(name) or None)
    return out


def _dicom_attributes(keywords: dict[str, str], files: Sequence[str]) -> dict[str, list[str | None]]:
    """Header fields of each DICOM file, read without its pixels; None for a field that is absent or empty,
    and for every field of a file that is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    wanted = list(keywords.values())
    out: dict[str, list[str | None]] = {name: [] for name in keywords}
    for file in files:
        try:
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=wanted)
            except InvalidDicomError:  # a bare data set (no preamble): the image reader accepts those too
                ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=wanted, force=True)
        except Exception:  # noqa: BLE001 - a PNG among DICOMs, or a header pydicom cannot parse: unknown
            ds = None
        for name, keyword in keywords.items():
            value = None if ds is None else ds.get(keyword)
            text = str(value).strip(" \x00") if value is not None else ""
            out[name].append(text or None)
    return out


# ---- raw values into groups -------------------------------------------------------------------------
def sex_group(value: str | None) -> str:
    """"F", "M" or "O" (DICOM's other) from M/F/O or male/female/other in any case; else "unknown"."""
    return _SEX.get(str(value or "").strip().upper(), UNKNOWN)


def age_years(value: str | float | int | None) -> float | None:
    """An age in years from a table's number (45, "45", "45.5") or a DICOM Age String ("045Y", "006M",
    "002W", "003D": years, months, weeks, days); None when missing, unreadable, negative or above
    `MAX_AGE_YEARS` (a data error, such as NIH's ages of 148-414)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        years = float(value)
    else:
        match = _DICOM_AGE.match(str(value).strip())
        if match is None:
            return None
        years = float(match.group(1)) * _YEARS_PER_UNIT[match.group(2).upper()]
    if not math.isfinite(years) or years < 0 or years > MAX_AGE_YEARS:
        return None
    return years


def age_band(value: str | float | int | None) -> str:
    """The age band of `age_years(value)`: "0-17", "18-39", "40-59", "60-79", "80+" (whole years: 17.9 is
    "0-17"), or "unknown"."""
    years = age_years(value)
    if years is None:
        return UNKNOWN
    whole = math.floor(years)
    for low, high in zip(AGE_BANDS, AGE_BANDS[1:]):
        if low <= whole < high:
            return f"{low}-{high - 1}"
    return f"{AGE_BANDS[-1]}+"


def view_group(value: str | None) -> str:
    """The view position as written, upper case (PA, AP, LL, ...); "unknown" when missing."""
    text = str(value or "").strip().upper()
    return text or UNKNOWN


_GROUPERS = {"sex": sex_group, "age_band": age_band, "view": view_group}


def group_order(subgroup: str, groups: Sequence[str]) -> list[str]:
    """The groups of one subgrouping in reading order: F, M, O; age bands youngest first; views A-Z;
    "unknown" last."""
    if subgroup == "age_band":
        bands = [f"{low}-{high - 1}" for low, high in zip(AGE_BANDS, AGE_BANDS[1:])] + [f"{AGE_BANDS[-1]}+"]
        rank = {band: index for index, band in enumerate(bands)}
    elif subgroup == "sex":
        rank = {"F": 0, "M": 1, "O": 2}
    else:
        rank = {}
    return sorted(set(groups), key=lambda g: (g == UNKNOWN, rank.get(g, len(rank)), g))


def group_values(raw: Mapping[str, Sequence[str | None]], subgroups: Sequence[str]) -> dict[str, list[str]]:
    """{subgrouping: [group of each image]} for `subgroups` (of `SUBGROUPS`) from `read_attributes`' values.

    Raises:
        KeyError: a subgrouping is unknown, or the raw attribute it needs was not read (names both).
    """
    out = {}
    for name in subgroups:
        if name not in SUBGROUPS:
            raise KeyError(f"unknown subgrouping {name!r}; the known ones are {', '.join(SUBGROUPS)}")
        if SUBGROUPS[name] not in raw:
            raise KeyError(f"subgrouping {name!r} needs the attribute {SUBGROUPS[name]!r}, which was not read "
                           f"(data.attributes.{SUBGROUPS[name]})")
        out[name] = [_GROUPERS[name](value) for value in raw[SUBGROUPS[name]]]
    return out
