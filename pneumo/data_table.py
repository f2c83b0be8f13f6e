"""The DataModule for CSV-labelled sets (RSNA Pneumonia Detection, NIH ChestX-ray14, the synthetic table).

Everything after "which files, which labels, which patients" is the folder module's: the decode-once
cache, class balance, loaders, bad-file reporting and skipped_files.txt. What differs is where the
splits come from: a table has no train/val/test folders, so the test split is the set's official list
(NIH) or a patient-grouped, stratified share of the images, and validation is carved out of the rest,
so that no patient is ever on two sides.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pneumo.cache import decode_all
from pneumo.data import ChestXrayDataModule, ImageFiles, _Source
from pneumo.splits import patient_split, write_split
from pneumo.tables import HOW_TO_GET_TABLES, TableRecords, read_table

EVALUATE_SPLITS = ("test", "all")


class TableDataModule(ChestXrayDataModule):
    """Images listed in a label CSV: `read_table` gives files, labels and patients; this splits and serves them.

    Splits: test = the official test list when `official_split` names lists that exist, else a
    patient-grouped, stratified `test_fraction` of the images (seeded by seed + 1, so it does not move
    when val_fraction changes); val = `val_fraction` of the remaining images, patient-grouped and
    stratified. `evaluate_split='all'` makes the test stage serve every labelled image instead
    (external validation of a model trained elsewhere). All other keyword arguments are
    ChestXrayDataModule's (image_size, batch_size, cache, on_bad_file, ...); `root` is `image_dir`.
    """

    def __init__(self, csv: str, image_dir: str, id_column: str, label: Mapping[str, Any],
                 file_template: str = "{id}", patient_column: str | None = None,
                 official_split: Mapping[str, str | None] | None = None, test_fraction: float = 0.2,
                 evaluate_split: str = "test", synthetic_table: Mapping[str, Any] | None = None,
                 name: str | None = None, val_strategy: str = "patient", **options: Any) -> None:
        if val_strategy != "patient":
            raise ValueError(f"data.val_strategy={val_strategy!r}: a label table has no val folder, so validation "
                             f"is always patient-grouped; use data.val_strategy=patient (or leave it out)")
        if options.get("synthetic"):
            raise ValueError("data.synthetic writes the Kaggle folder layout; a label table uses "
                             "data.synthetic_table (see conf/data/synthetic_table.yaml)")
        if not 0 < test_fraction < 1:
            raise ValueError(f"data.test_fraction={test_fraction} must be between 0 and 1")
        if evaluate_split not in EVALUATE_SPLITS:
            raise ValueError(f"data.evaluate_split={evaluate_split!r}: choose 'test' (the held-out split) or "
                             f"'all' (every labelled image: external validation of a model trained elsewhere)")
        options.pop("synthetic", None)
        super().__init__(root=image_dir, val_strategy="patient", **options)
        self.csv = Path(csv).expanduser()
        self.name = name or self.csv.parent.name
        self.id_column, self.file_template = id_column, file_template
        self.label_rule = dict(label)
        self.patient_column = patient_column
        self.official_split = dict(official_split) if official_split else None
        self.test_fraction, self.evaluate_split = test_fraction, evaluate_split
        self.synthetic_table = dict(synthetic_table) if synthetic_table else None
        self._records: TableRecords | None = None
        self._source: _Source | None = None
        self._rows: dict[str, np.ndarray] = {}

    # ---- discovery -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.synthetic_table is not None:
            from pneumo.synthetic_table import ensure_synthetic_table  # only the demo needs it
            ensure_synthetic_table(root=self.csv.parent, **self.synthetic_table)

    def split_dir(self, split: str) -> Path:
        """A table's images share one folder whatever their split."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist (data.image_dir). {HOW_TO_GET_TABLES}")
        return self.root

    def scan(self, split: str) -> Any:
        raise TypeError(f"{self.name} is a label table ({self.csv}), not split folders: "
                        f"use table() for its files and labels")

    def table(self) -> TableRecords:
        """The CSV read once; its missing files become skipped-file entries (split 'table')."""
        if self._records is None:
            records = read_table(self.csv, self.root, id_column=self.id_column, file_template=self.file_template,
                                 label=self.label_rule, patient_column=self.patient_column,
                                 official_split=self.official_split)
            self.skipped += [{"split": "table", "path": entry["path"], "reason": entry["reason"]}
                             for entry in records.report["missing_files"]]
            self._records = records
            self._report_bad_files()  # with on_bad_file=error, stop before a long decode
            if not len(records):
                report = records.report
                raise ValueError(f"no usable images in {self.csv}: {report['rows']} rows, excluded "
                                 f"{report['excluded'] or 'none'}, {len(report['missing_files'])} listed file(s) "
                                 f"missing under {self.root}. Check data.label and data.file_template. "
                                 f"{HOW_TO_GET_TABLES}")
        return self._records

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        wanted = ["test"] if stage in ("test", "predict") else ["train", "val"]
        if all(split in self.datasets for split in wanted):
            return  # Lightning calls setup again inside fit; the work is done once
        source = self._decoded()
        for split in wanted:
            self._register(split, source, self._split_rows(split))
        self._write_split()
        self._report_bad_files()

    def _decoded(self) -> _Source:
        """Every listed image decoded once (the cache key does not depend on how the table is split)."""
        if self._source is None:
            records = self.table()
            # With cache=none this pass only finds bad files; the pixels are dropped again.
            decoded = decode_all(records.files, self.image_size, self.channels,
                                 cache_dir=self.cache_dir if self.cache == "disk" else None,
                                 description=f"decoding {self.name}", dicom_voi=self.dicom_voi)
            self.skipped += [{"split": "table", "path": records.files[row], "reason": reason}
                             for row, reason in sorted(decoded.bad.items())]
            rows = np.array(decoded.good_rows, dtype=np.int64)
            if len(rows) == 0:
                self._report_bad_files()
                raise ValueError(f"none of the {len(records)} images listed in {self.csv} could be read. "
                                 f"{HOW_TO_GET_TABLES}")
            pixels: Any = (ImageFiles(records.files, self.image_size, self.channels, self.dicom_voi, records.labels)
                           if self.cache == "none" else decoded.pixels)
            self._source = _Source(records.files, records.labels, pixels, rows)
        return self._source

    def _split_rows(self, split: str) -> np.ndarray:
        """Rows (of the decoded table) of a split, computed on first use: 'all' needs no splitting at all."""
        if split == "test" and self.evaluate_split == "all":
            return self._decoded().rows
        if "test" not in self._rows:
            self._split_test()
        if split in ("train", "val") and "train" not in self._rows:
            pool = self._rows["pool"]
            train, val = self._grouped(pool, self.val_fraction, self.seed, "validation (data.val_fraction)")
            self._rows["train"], self._rows["val"] = pool[train], pool[val]
        return self._rows[split]

    def _split_test(self) -> None:
        """Held-out test rows and the pool left for train/val: the official lists, else test_fraction."""
        good, records = self._decoded().rows, self.table()
        if records.official is not None:
            sides = np.array([records.official[row] for row in good])
            test, pool = good[sides == "test"], good[sides == "train"]
            for side, rows in (("test", test), ("train", pool)):
                if not len(rows):
                    raise ValueError(f"the official {side} list ({(self.official_split or {}).get(side)}, next to "
                                     f"{self.csv}) matches no usable image: check it lists this set's file names, "
                                     f"or pass data.official_split=null")
            shared = {records.patients[r] for r in test} & {records.patients[r] for r in pool}
            if shared:  # the official split is the contract: warn, do not rewrite it
                warnings.warn(f"{len(shared)} patient(s) are on both sides of {self.name}'s official split, "
                              f"e.g. {sorted(shared)[:5]}", stacklevel=2)
        else:
            keep, held = self._grouped(good, self.test_fraction, self.seed + 1, "test (data.test_fraction)")
            test, pool = good[held], good[keep]
        self._rows["test"], self._rows["pool"] = test, pool

    def _grouped(self, rows: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(kept, taken) positions in `rows`: `fraction` of each class taken, whole patients only."""
        records = self.table()
        labels = records.labels[rows]
        try:
            kept, taken = patient_split([records.files[r] for r in rows], labels.tolist(), fraction, seed,
                                        patients=[records.patients[r] for r in rows])
        except ValueError as error:
            patients = {label: len({records.patients[r] for r in rows[labels == label]}) for label in (0.0, 1.0)}
            raise ValueError(f"cannot carve a patient-grouped {what} split out of {len(rows)} images of {self.csv}: "
                             f"each class needs at least 2 patients, and there are {int(patients[0.0])} negative "
                             f"and {int(patients[1.0])} positive. Add labelled images or check data.label "
                             f"({error})") from error
        return np.array(kept, dtype=np.int64), np.array(taken, dtype=np.int64)

    def _write_split(self) -> None:
        """split.json: the files of each split so far, relative to image_dir so the split is portable."""
        if self.output_dir is None:
            return
        test_split = ("all" if self.evaluate_split == "all" else
                      "official" if self.table().official is not None else f"test_fraction={self.test_fraction}")
        write_split(self.output_dir / "split.json", self.root,
                    {split: self.files[split] for split in ("train", "val", "test") if split in self.files},
                    name=self.name, test_split=test_split)

    # ---- facts the rest of the run needs ---------------------------------------------------------
    def patients(self, split: str) -> list[str]:
        """The patient of each image of a split, from the table's patient column."""
        records = self.table()
        patient_of = dict(zip(records.files, records.patients))
        return [patient_of[file] for file in self.files[split]]

    def describe(self) -> dict[str, Any]:
        """The data set's name, what its table gave and what each split holds: for logs and reports."""
        report = self.table().report
        unreadable = sum(1 for entry in self.skipped if not entry["reason"].startswith("listed in "))
        return {"name": self.name, "source": str(self.csv), "label_rule": report["rule"], "rows": report["rows"],
                "images": report["images"], "positives": report["positives"], "negatives": report["negatives"],
                "excluded": report["excluded"], "missing_files": len(report["missing_files"]),
                "unreadable_files": unreadable,
                "test_split": "official lists" if self.table().official is not None
                else f"patient-grouped test_fraction={self.test_fraction}",
                "evaluate_split": self.evaluate_split, "splits": self.summary()}
