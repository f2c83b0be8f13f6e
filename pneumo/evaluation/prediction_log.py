"""The output folder of a bulk prediction, written as it goes so that an interrupted run resumes.

Three files in the output folder:
- predictions.csv: one row per scored image, columns `PREDICTION_COLUMNS` (evaluate.py's), appended and
  flushed batch by batch;
- skipped_files.txt: `path<TAB>reason` per file left out (not an image, or unreadable), appended as found;
- predictions.json: what wrote them (the folder, the model's checkpoint SHA-256, the threshold). A rerun
  into the same folder skips the files already in the CSV or the skipped list, and refuses to mix in the
  scores of another model or folder.
A row cut off by a kill mid-write is dropped on resume (its image is scored again).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, TextIO

from pneumo.data.splits import patient_id

PREDICTION_COLUMNS = ["path", "patient_id", "label", "probability", "prediction"]


class ResumeError(ValueError):
    """The output folder holds predictions another model or folder wrote; the message says how to go on."""


class PredictionLog:
    """The resumable predictions.csv / skipped_files.txt / predictions.json of `output_dir`.

    `identity`: what must match for a rerun to append (e.g. {"folder", "model_sha256", "threshold"});
    `details`: written into predictions.json but not compared (runtime, temperature, ...).

    Raises:
        ResumeError: the folder's predictions.json disagrees with `identity`, or predictions.csv has other
            columns.
    """

    def __init__(self, output_dir: Path, identity: dict[str, Any], details: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.output_dir / "predictions.csv"
        self.skipped_path = self.output_dir / "skipped_files.txt"
        self.manifest_path = self.output_dir / "predictions.json"
        self._check_manifest(identity)
        self.manifest_path.write_text(json.dumps({**identity, **(details or {})}, indent=2))
        self.scored: set[str] = set()
        self.n_positive = 0
        self._read_csv()
        self.skipped: dict[str, str] = self._read_skipped()
        self._csv: TextIO | None = None
        self._writer: Any = None

    @property
    def resumed(self) -> int:
        """Rows the CSV held before this run."""
        return self._resumed

    def done(self, path: str) -> bool:
        """Whether `path` was scored or left out by an earlier run into this folder."""
        return path in self.scored or path in self.skipped

    def record_skipped(self, entries: list[dict[str, str]]) -> list[dict[str, str]]:
        """Add files left out ({"path", "reason"}) that are not listed yet; returns the new ones."""
        new = [entry for entry in entries if entry["path"] not in self.skipped]
        if new:
            with self.skipped_path.open("a") as handle:
                handle.writelines(f"{entry['path']}\t{entry['reason']}\n" for entry in new)
            self.skipped.update((entry["path"], entry["reason"]) for entry in new)
        return new

    def append(self, files: list[str], probs: Any, threshold: float) -> None:
        """One row per file (label empty), flushed: a kill after this call loses none of them."""
        if self._csv is None:
            new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            self._csv = self.csv_path.open("a", newline="")
            self._writer = csv.writer(self._csv)
            if new:
                self._writer.writerow(PREDICTION_COLUMNS)
        for file, prob in zip(files, probs):
            prediction = int(prob >= threshold)
            self._writer.writerow([file, patient_id(file), "", f"{prob:.6f}", prediction])
            self.scored.add(file)
            self.n_positive += prediction
        self._csv.flush()

    def close(self) -> None:
        """Close predictions.csv (rows are flushed as appended; a later `append` opens it again)."""
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    # ---- reading what an earlier run left ----------------------------------------------------------
    def _check_manifest(self, identity: dict[str, Any]) -> None:
        if not self.manifest_path.is_file():
            if self.csv_path.is_file() and self.csv_path.stat().st_size:
                raise ResumeError(f"{self.csv_path} exists but no {self.manifest_path.name} says which model wrote "
                                  f"it: pass another output_dir, or remove {self.csv_path}")
            return
        try:
            stored = json.loads(self.manifest_path.read_text())
        except ValueError:
            stored = {}
        changed = [f"{key}: {stored.get(key)!r} then, {value!r} now" for key, value in identity.items()
                   if stored.get(key) != value]
        if changed:
            raise ResumeError(f"{self.output_dir} holds predictions of another run ({'; '.join(changed)}); "
                              f"resuming would mix them. Pass another output_dir (or remove that folder)")

    def _read_csv(self) -> None:
        self._resumed = 0
        if not self.csv_path.is_file():
            return
        _drop_torn_tail(self.csv_path)
        with self.csv_path.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is not None and header != PREDICTION_COLUMNS:
                raise ResumeError(f"{self.csv_path} has columns {header}, not {PREDICTION_COLUMNS}: pass "
                                  f"another output_dir")
            for row in reader:
                if len(row) == len(PREDICTION_COLUMNS):
                    self.scored.add(row[0])
                    self.n_positive += row[4] == "1"
        self._resumed = len(self.scored)

    def _read_skipped(self) -> dict[str, str]:
        if not self.skipped_path.is_file():
            return {}
        _drop_torn_tail(self.skipped_path)
        lines = self.skipped_path.read_text().splitlines()
        return dict(line.split("\t", 1) for line in lines if "\t" in line)


def _drop_torn_tail(path: Path, block: int = 65536) -> None:
    """Cut a file back to its last complete line (a kill can leave half a row), scanning back `block` bytes
    at a time until a newline however long the torn row is: a complete line (the header, a row) is never
    cut into. Only a file with no complete line at all (a torn header) is emptied."""
    size = path.stat().st_size
    if not size:
        return
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            cut = handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                return
            end = start
        handle.truncate(0)
