"""Reading a label CSV (RSNA, NIH ChestX-ray14, or any one-table set) into one record per image.

Public adult pneumonia sets label their images in a table rather than in folder names, each in its own
way: RSNA lists one row per bounding box (several rows for one image, `Target` 1 on each box row),
NIH lists one row per image with `|`-separated findings. This module turns either into the same thing:
per image a file, a 0/1 label and a patient, plus a report of everything left out and why, so that no
image disappears without a trace. Only the standard `csv` module is used (pandas is not a dependency).
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["HOW_TO_GET_TABLES", "TableRecords", "fill_template", "read_table", "template_fields"]

HOW_TO_GET_TABLES = (
    "RSNA: download the Kaggle competition 'rsna-pneumonia-detection-challenge' "
    "(kaggle competitions download -c rsna-pneumonia-detection-challenge) and unzip it so that "
    "stage_2_train_labels.csv and stage_2_train_images/*.dcm lie in DIR/rsna-pneumonia. "
    "NIH ChestX-ray14: download Data_Entry_2017.csv, train_val_list.txt, test_list.txt and the images_*.tar.gz "
    "archives from https://nihcc.app.box.com/v/ChestXray-NIHCC into DIR/nih-chestxray14 and unpack the archives "
    "there (they hold images/). Then set PNEUMO_DATA_DIR=DIR (default: the project's data/ folder), or pass "
    "data.csv=... and data.image_dir=...; "
    "or run on the built-in demo table with data=synthetic_table.")

LABEL_RULES = ("column", "findings")
LABEL_KEYS = ("rule", "column", "positive", "negative", "separator", "other")
OTHER_CHOICES = ("exclude", "negative")
# `{Image Index}` must work, so fields are matched by a regex rather than str.format (no spaces there).
_FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass
class TableRecords:
    """One entry per usable image, in the CSV's order of first appearance.

    `official` holds 'train'/'test' per image when official split lists were found, else None.
    `report` says what was read and what was left out (see `read_table`).
    """

    files: list[str]
    labels: np.ndarray
    patients: list[str]
    official: list[str] | None
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)


def read_table(csv_path: str | Path, image_dir: str | Path, *, id_column: str, file_template: str = "{id}",
               label: Mapping[str, Any], patient_column: str | None = None,
               official_split: Mapping[str, str | None] | None = None) -> TableRecords:
    """Per-image files, labels and patients from a label CSV.

    `label.rule`:
      - `column`: positive when `label.column`'s value is in `label.positive` (default [1]); with several
        rows for one image (RSNA: one per box) the image is positive if ANY row is. Values that are not
        positive are negative, unless `label.negative` lists the negative values: then the rest follow
        `label.other` (exclude | negative).
      - `findings`: `label.column` split on `label.separator`; positive if `label.positive` is among the
        findings, negative if the field is exactly one of `label.negative`, the rest follow `label.other`.
        One row per image is expected: an image listed twice with different labels is left out.
    The file of an image is `image_dir / file_template` with `{column}` fields filled from its row (`{id}` is
    the id column); when that path is missing, a file of that name anywhere under image_dir is used.

    `report` keys: csv, image_dir, rule, rows, images, positives, negatives, excluded ({reason: images}),
    excluded_findings (findings of the excluded images, `findings` rule), duplicate_rows, conflicting
    (ids with conflicting rows), images_with_several_rows, found_in_subfolder, missing_files
    ([{path, reason}]), official (what the official lists did, or None).
    """
    csv_path, image_dir = Path(csv_path).expanduser(), Path(image_dir).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"label table {csv_path} does not exist (data.csv). {HOW_TO_GET_TABLES}")
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"image folder {image_dir} does not exist (data.image_dir, the images of {csv_path.name}). Point "
            f"data.image_dir at the folder holding the images; images in subfolders of it (NIH's "
            f"images_001/images/...) are found by file name. {HOW_TO_GET_TABLES}")
    rule = _check_label(label)
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [name for name in (reader.fieldnames or []) if name is not None]
        if not columns:
            raise ValueError(f"{csv_path} is empty: expected a header row naming its columns")
        _check_columns(csv_path, columns, id_column, file_template, rule, patient_column)
        images, rows = _collect(reader, id_column, patient_column, file_template, rule)

    report: dict[str, Any] = {"csv": str(csv_path), "image_dir": str(image_dir), "rule": rule["rule"],
                              "rows": rows, "excluded": Counter(), "excluded_findings": Counter(),
                              "duplicate_rows": 0, "conflicting": [], "images_with_several_rows": 0,
                              "found_in_subfolder": 0, "missing_files": [], "official": None}
    kept = _label_images(images, rule, report)
    kept, official = _assign_official(kept, csv_path, official_split, report)
    files, labels, patients, sides = [], [], [], []
    finder = _FileFinder(image_dir)
    for index, (image_id, entry) in enumerate(kept):
        path = finder.find(entry["file"])
        if path is None:
            report["missing_files"].append({"path": str(image_dir / entry["file"]),
                                            "reason": f"listed in {csv_path} but missing"})
            continue
        files.append(str(path))
        labels.append(entry["label"])
        patients.append(entry["patient"])
        if official is not None:
            sides.append(official[index])
    report["found_in_subfolder"] = finder.found_in_subfolder
    report["excluded"] = dict(report["excluded"])
    report["excluded_findings"] = dict(report["excluded_findings"].most_common())
    report["images"] = len(files)
    report["positives"] = int(sum(labels))
    report["negatives"] = len(labels) - report["positives"]
    return TableRecords(files, np.array(labels, dtype=np.float32), patients,
                        sides if official is not None else None, report)


def fill_template(template: str, row: Mapping[str, str]) -> str:
    """`template` with each `{name}` replaced by row[name]; names may contain spaces (`{Image Index}`)."""
    return _FIELD.sub(lambda match: row[match.group(1)], template)


def template_fields(template: str) -> list[str]:
    return _FIELD.findall(template)


# ---- checks -------------------------------------------------------------------------------------
def _check_label(label: Mapping[str, Any]) -> dict[str, Any]:
    """The label rule with defaults filled in; a bad rule or key names the `data.label` key to fix."""
    label = dict(label or {})
    unknown = sorted(set(label) - set(LABEL_KEYS))
    if unknown:
        raise ValueError(f"data.label has unknown key(s) {unknown}; known keys: {', '.join(LABEL_KEYS)}")
    if label.get("rule") not in LABEL_RULES:
        raise ValueError(f"data.label.rule={label.get('rule')!r}: choose 'column' (a 0/1 or class column, "
                         f"RSNA's Target) or 'findings' (a separated list of findings, NIH's Finding Labels)")
    if not label.get("column"):
        raise ValueError(f"data.label.column is not set: name the CSV column holding the label "
                         f"(rule {label['rule']})")
    other = label.get("other") or "exclude"
    if other not in OTHER_CHOICES:
        raise ValueError(f"data.label.other={other!r}: choose 'exclude' or 'negative'")
    positive = label.get("positive")
    if label["rule"] == "column":
        positive = [1] if positive is None else positive
        negative = label.get("negative")
        return {"rule": "column", "column": label["column"], "other": other,
                "positive": {_canon(v) for v in _as_list(positive)},
                "negative": None if negative is None else {_canon(v) for v in _as_list(negative)}}
    if not positive:
        raise ValueError("data.label.positive is not set: name the finding that makes an image positive "
                         "(NIH: Pneumonia)")
    negative = label.get("negative")
    if not negative:
        raise ValueError("data.label.negative is not set: list the field values that make an image negative "
                         "(NIH: [No Finding])")
    return {"rule": "findings", "column": label["column"], "other": other,
            "separator": label.get("separator") or "|",
            "positive": {str(v).strip().casefold() for v in _as_list(positive)},
            "negative": {str(v).strip().casefold() for v in _as_list(negative)}}


def _check_columns(csv_path: Path, columns: list[str], id_column: str, file_template: str,
                   rule: dict[str, Any], patient_column: str | None) -> None:
    """Every configured column must exist: say which key named it and which columns there are."""
    listing = ", ".join(repr(c) for c in columns)
    wanted = [("data.id_column", id_column), ("data.label.column", rule["column"])]
    if patient_column:
        wanted.append(("data.patient_column", patient_column))
    for key, column in wanted:
        if column not in columns:
            raise ValueError(f"{csv_path} has no column {column!r} ({key}); its columns are: {listing}")
    for name in template_fields(file_template):
        if name != "id" and name not in columns:
            raise ValueError(f"data.file_template={file_template!r} uses {{{name}}}, but {csv_path} has no column "
                             f"{name!r}; use {{id}} for data.id_column or one of: {listing}")


# ---- labelling ----------------------------------------------------------------------------------
def _collect(reader: csv.DictReader, id_column: str, patient_column: str | None, file_template: str,
             rule: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], int]:
    """Rows grouped by image id (first appearance order), each row reduced to its label vote."""
    images: dict[str, dict[str, Any]] = {}
    rows = 0
    for raw in reader:
        rows += 1
        row = {key: (value or "").strip() for key, value in raw.items() if key is not None}
        image_id = row[id_column]
        if not image_id:
            images.setdefault("", {"votes": [], "findings": [], "file": "", "patient": ""})["votes"].append(
                f"empty {id_column}")
            continue
        entry = images.get(image_id)
        if entry is None:
            patient = row[patient_column] if patient_column else ""
            entry = images[image_id] = {"votes": [], "findings": [], "patient": patient or image_id,
                                        "file": fill_template(file_template, {**row, "id": image_id})}
        vote, findings = _vote(row[rule["column"]], rule)
        entry["votes"].append(vote)
        entry["findings"].append(findings)
    return images, rows


def _vote(value: str, rule: dict[str, Any]) -> tuple[float | str, list[str]]:
    """One row's label: 1.0, 0.0, or the reason it gives none; plus its findings (findings rule)."""
    column = rule["column"]
    if not value:
        return f"empty {column}", []
    if rule["rule"] == "column":
        canon = _canon(value)
        if canon in rule["positive"]:
            return 1.0, []
        if rule["negative"] is None or canon in rule["negative"]:
            return 0.0, []
        return (0.0 if rule["other"] == "negative" else f"{column} value not listed in data.label"), []
    findings = [part.strip() for part in value.split(rule["separator"]) if part.strip()]
    folded = [f.casefold() for f in findings]
    if any(f in rule["positive"] for f in folded):
        return 1.0, findings
    if value.strip().casefold() in rule["negative"]:
        return 0.0, findings
    if rule["other"] == "negative":
        return 0.0, findings
    return "other findings only (data.label.other=exclude)", findings


def _label_images(images: dict[str, dict[str, Any]], rule: dict[str, Any],
                  report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One label per image: any positive row for `column`; one consistent row for `findings`."""
    kept = []
    for image_id, entry in images.items():
        votes = entry["votes"]
        if not image_id:
            report["excluded"][votes[0]] += len(votes)  # rows without an id: counted as rows
            continue
        if len(votes) > 1:
            report["images_with_several_rows"] += 1
        if rule["rule"] == "column":
            labels = [v for v in votes if not isinstance(v, str)]
            if 1.0 in labels:
                result: float | str = 1.0
            elif len(labels) == len(votes):
                result = 0.0
            else:  # no positive row and at least one row without a label: unsure, leave out
                result = next(v for v in votes if isinstance(v, str))
        else:
            if len(set(votes)) > 1:
                report["conflicting"].append({"id": image_id, "rows": len(votes),
                                              "labels": [str(v) for v in votes]})
                result = "listed more than once with conflicting labels"
            else:
                report["duplicate_rows"] += len(votes) - 1
                result = votes[0]
        if isinstance(result, str):
            report["excluded"][result] += 1
            report["excluded_findings"].update(entry["findings"][0])
            continue
        kept.append((image_id, {"file": entry["file"], "label": result, "patient": entry["patient"]}))
    return kept


# ---- official split -----------------------------------------------------------------------------
def _assign_official(kept: list[tuple[str, dict[str, Any]]], csv_path: Path,
                     official_split: Mapping[str, str | None] | None,
                     report: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any]]], list[str] | None]:
    """'train'/'test' per image from the official lists (file names, one per line), or None without them.

    Images in neither list, or in both, are left out and counted: the official split is the contract.
    """
    named = {side: value for side, value in dict(official_split or {}).items() if value}
    unknown = sorted(set(named) - {"train", "test"})
    if unknown:
        raise ValueError(f"data.official_split has unknown key(s) {unknown}: use train and test")
    if not named:
        return kept, None
    paths = {side: (csv_path.parent / value).expanduser() for side, value in named.items()}
    present = {side: path for side, path in paths.items() if path.is_file()}
    if not present:
        report["official"] = {"used": False, "absent": [str(p) for p in paths.values()]}
        return kept, None
    if set(present) != {"train", "test"}:
        missing = [str(path) for side, path in paths.items() if side not in present]
        raise FileNotFoundError(
            f"official split list(s) {missing} missing while {[str(p) for p in present.values()]} exist(s) "
            f"(data.official_split, relative to {csv_path.parent}): put both lists next to the CSV, or pass "
            f"data.official_split=null for a patient-grouped data.test_fraction split")
    lists = {side: {line.strip() for line in path.read_text().splitlines() if line.strip()}
             for side, path in present.items()}
    chosen, sides = [], []
    neither: list[str] = []
    both: list[str] = []
    for image_id, entry in kept:
        name = Path(entry["file"]).name
        found = [side for side in ("train", "test") if name in lists[side]]
        if len(found) == 1:
            chosen.append((image_id, entry))
            sides.append(found[0])
        else:
            (neither if not found else both).append(name)
    for reason, names in (("in neither official split list", neither), ("in both official split lists", both)):
        if names:
            report["excluded"][reason] += len(names)
    report["official"] = {"used": True, "lists": {side: str(path) for side, path in present.items()},
                          "train": sides.count("train"), "test": sides.count("test"),
                          "in_neither": len(neither), "in_both": len(both), "examples": (neither + both)[:10]}
    return chosen, sides


# ---- files --------------------------------------------------------------------------------------
class _FileFinder:
    """image_dir / name, or else a file of that name anywhere under image_dir (NIH's images_001/images/...).

    The recursive index is built only when a direct path is missing, once.
    """

    def __init__(self, image_dir: Path) -> None:
        self.image_dir = image_dir
        self.index: dict[str, Path] | None = None
        self.found_in_subfolder = 0

    def find(self, name: str) -> Path | None:
        direct = self.image_dir / name
        if direct.is_file():
            return direct
        if self.index is None:
            self.index = {}
            for folder, _, names in sorted(os.walk(self.image_dir)):
                for file in sorted(names):
                    self.index.setdefault(file, Path(folder) / file)  # first one in sorted order wins
        found = self.index.get(Path(name).name)
        if found is not None:
            self.found_in_subfolder += 1
        return found


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, bytes, int, float)) or value is None:
        return [value]
    return list(value)


def _canon(value: Any) -> str:
    """'1', ' 1', '1.0' and 1 compare equal: CSV cells are text, YAML values are typed."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)

