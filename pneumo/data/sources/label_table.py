"""Images listed in a label CSV (RSNA Pneumonia Detection, NIH ChestX-ray14, the synthetic table, any table)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pneumo.data.attributes import attribute_map, read_attributes
from pneumo.data.os_metadata import metadata_reason
from pneumo.data.sources.base import CARVE, DataSource, Listing, plain
from pneumo.data.tables import HOW_TO_GET_TABLES, TableRecords, read_table

EVALUATE_SPLITS = ("test", "all")


class LabelTable(DataSource):
    """Files, labels and patients from `pneumo.data.tables.read_table`; the split from the set's official lists.

    A table has no split folders: with official lists (NIH's train_val_list.txt / test_list.txt) each
    image is train or test as listed, else every image is left to the data module, which carves a
    patient-grouped, stratified data.test_fraction as test (seeded by seed + 1, so it does not move when
    val_fraction changes); validation is always carved out of train. A listed file that is missing is a
    bad entry (it stops the run under data.on_bad_file=error); a listed file that is operating-system
    metadata (an AppleDouble `._x.png`) is left out and listed as "(ignored)".

    Args:
        csv, image_dir, id_column, label, file_template, patient_column, official_split: as `read_table`
            takes them (data.csv, data.image_dir, ...).
        evaluate_split: "test" (the held-out split) or "all" (the test stage serves every labelled image:
            external validation of a model trained elsewhere).
        synthetic_table: the demo variant: parameters of `pneumo.demo.synthetic_table.ensure_synthetic_table`,
            which writes the built-in DICOM table next to `csv` first; None for real data.
        name: the data set's name; default the CSV's folder name.
        attributes: data.attributes, where each image's sex, age and view are read for subgroup results
            ({from: table | dicom, sex: COLUMN or KEYWORD, ...}, see `pneumo.data.attributes`); None: none.

    Raises:
        ValueError: evaluate_split is not test or all, or data.attributes is malformed.
    """

    has_own_val = False

    def __init__(self, csv: str | Path, image_dir: str | Path, id_column: str, label: Mapping[str, Any],
                 file_template: str = "{id}", patient_column: str | None = None,
                 official_split: Mapping[str, str | None] | None = None, evaluate_split: str = "test",
                 synthetic_table: Mapping[str, Any] | None = None, name: str | None = None,
                 attributes: Mapping[str, Any] | None = None) -> None:
        if evaluate_split not in EVALUATE_SPLITS:
            raise ValueError(f"data.evaluate_split={evaluate_split!r}: choose 'test' (the held-out split) or "
                             f"'all' (every labelled image: external validation of a model trained elsewhere)")
        self.csv = Path(csv).expanduser()
        self.root = Path(image_dir).expanduser()
        self.name = name or self.csv.parent.name
        self.id_column, self.file_template = id_column, file_template
        self.label_rule = plain(label)
        self.patient_column = patient_column
        self.official_split = plain(official_split) if official_split else None
        self.evaluate_split = evaluate_split
        self.synthetic_table = plain(synthetic_table) if synthetic_table else None
        self.attribute_map = attribute_map(plain(attributes) if attributes else None)
        self.advice = ("Check data.label, data.file_template and data.official_split (official lists must name "
                       "this set's files; data.official_split=null splits by data.test_fraction). " + HOW_TO_GET_TABLES)
        self._records: TableRecords | None = None

    @property
    def location(self) -> str:
        return str(self.csv)

    def prepare(self) -> None:
        if self.synthetic_table is not None:
            from pneumo.demo.synthetic_table import ensure_synthetic_table  # only the demo needs it

            ensure_synthetic_table(root=self.csv.parent, **self.synthetic_table)

    def table(self) -> TableRecords:
        """The CSV, read once (every usable image found under image_dir).

        Raises:
            FileNotFoundError: the CSV or the image folder is missing.
            ValueError: a configured column is missing, or no image is usable; says which key to check.
        """
        if self._records is None:
            records = read_table(self.csv, self.root, id_column=self.id_column, file_template=self.file_template,
                                 label=self.label_rule, patient_column=self.patient_column,
                                 official_split=self.official_split)
            if not len(records):
                report = records.report
                raise ValueError(f"no usable images in {self.csv}: {report['rows']} rows, excluded "
                                 f"{report['excluded'] or 'none'}, {len(report['missing_files'])} listed file(s) "
                                 f"missing under {self.root}. Check data.label and data.file_template. "
                                 f"{HOW_TO_GET_TABLES}")
            self._records = records
        return self._records

    def listings(self, splits: frozenset[str]) -> list[Listing]:
        """The whole table, one group: the official side of each image, or CARVE; every image is test
        when the test stage asks and evaluate_split is 'all'."""
        records = self.table()
        skipped = [{"path": entry["path"], "reason": entry["reason"]} for entry in records.report["missing_files"]]
        keep = []
        for row, file in enumerate(records.files):
            reason = metadata_reason(file, self.root)
            if reason is None:
                keep.append(row)
            else:
                skipped.append({"path": file, "reason": f"listed in {self.csv}, but {reason}"})
        if splits == {"test"} and self.evaluate_split == "all":
            sides = ["test"] * len(records)
        elif records.official is not None:
            sides = list(records.official)
        else:
            sides = [CARVE] * len(records)
        return [Listing(group="table", where=str(self.csv), files=[records.files[r] for r in keep],
                        labels=records.labels[keep], patients=[records.patients[r] for r in keep],
                        splits=[sides[r] for r in keep], skipped=skipped)]

    def test_split(self) -> str | None:
        return "official lists" if self.table().official is not None else None

    def attributes(self, files: Sequence[str]) -> dict[str, list[str | None]]:
        """data.attributes' columns of the CSV, or header fields of the DICOM files, per file."""
        return read_attributes(self.attribute_map, files, csv_path=self.csv, image_dir=self.root,
                               id_column=self.id_column, file_template=self.file_template)

    def facts(self) -> dict[str, Any]:
        report = self.table().report
        return {"label_rule": report["rule"], "rows": report["rows"], "images": report["images"],
                "positives": report["positives"], "negatives": report["negatives"], "excluded": report["excluded"],
                "missing_files": len(report["missing_files"])}
