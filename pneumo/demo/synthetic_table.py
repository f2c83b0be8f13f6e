"""Built-in synthetic RSNA-style table: DICOM files plus a label CSV, for the demo and CI.

The RSNA Pneumonia Detection set (Kaggle competition) cannot be downloaded everywhere, so this module
writes a stand-in with its layout and formats::

    ROOT/stage_2_train_labels.csv             patientId,x,y,width,height,Target
    ROOT/stage_2_train_images/<patientId>.dcm

As in RSNA, a pneumonia image has one row per opacity box (one or two here, Target 1) and a normal
image exactly one row with empty box fields and Target 0; about a third of the images are positive.

The pictures are those of `pneumo.demo.synthetic` (drawn by `pneumo.demo.render`) (same renderer, other seeds), so a model trained on the
Kaggle-style synthetic folders can classify these. What the table adds is DICOM variety that real
exports have, cycled over the images so every kind is present: MONOCHROME1 (inverted storage),
12-bit values with Rescale Slope/Intercept, Window Center/Width, and JPEG Baseline compression.
Headers carry the attributes subgroup results read (`pneumo.data.attributes`): PatientSex (M, F, some
missing), PatientAge as DICOM Age Strings ("045Y"; infants in "006M", "002W", "003D"; some missing, a few
over 120 years, the kind of error NIH's table holds) and ViewPosition (PA, AP), drawn from their own seed
stream so ids, labels and pictures are those of earlier versions.
Stored values are chosen so that decoding (`pneumo.data.dicom_reader`) gives back the rendered picture: exactly
for the uncompressed kinds, within JPEG error for the compressed one. The boxes are plausible
lung-zone boxes drawn per positive image, not traced from its opacities; only Target labels images.

Generation is deterministic: the same parameters give the same patientIds, labels and pixels.
"""
from __future__ import annotations

import csv
import io
import multiprocessing
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo.demo import synthetic
from pneumo.demo.render import render_image
from pneumo.demo.written_once import WrittenOnce

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "ENCODINGS",
    "FORMAT_VERSION",
    "IMAGES_DIR",
    "LABELS_CSV",
    "LABEL_COLUMNS",
    "MARKER_NAME",
    "Encoding",
    "TableImage",
    "ensure_synthetic_table",
    "plan_table",
    "render_picture",
    "write_synthetic_table",
]

# Bump whenever rendering, encodings or naming change, so cached tables get rewritten.
FORMAT_VERSION = 2
MARKER_NAME = ".synthetic_table.json"
_INCOMPLETE_NAME = ".synthetic_table.incomplete"
_FOLDER = WrittenOnce(MARKER_NAME, _INCOMPLETE_NAME, "synthetic table")
# RSNA's names: the label CSV and the image folder beside it.
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")

_POSITIVE_FRACTION = 1 / 3
_TWO_BOXES_P = 0.55
_JPEG_QUALITY = 95
# Seed stream tags: distinct from pneumo.demo.synthetic's (1 plan, 2 images), so no picture is shared.
_PLAN_STREAM = 3
_IMAGE_STREAM = 4
_ATTRIBUTE_STREAM = 5
# Shares of images without PatientSex / PatientAge, and with an impossible age (> 120 years).
_NO_SEX, _NO_AGE, _BAD_AGE = 0.08, 0.06, 0.03
# 12-bit windowed storage: stored = 8 * display + offset, so the window covers 0..2040 + offset.
_WINDOW_STEP, _WINDOW_OFFSET = 8, 512
_TWELVE_BIT_MAX = 4095


@dataclass(frozen=True)
class Encoding:
    """How one file stores its picture; the decoder must undo it to the rendered gray values."""

    name: str
    photometric: str = "MONOCHROME2"
    bits: int = 8  # 8 (uint8) or 12 (in 16-bit words)
    slope: float | None = None  # Rescale Slope/Intercept, when present
    intercept: float | None = None
    window: bool = False  # Window Center/Width mapping the stored range exactly onto 0..255
    jpeg: bool = False  # JPEG Baseline (8-bit MONOCHROME2 only)


ENCODINGS = (
    Encoding("8-bit"),
    Encoding("8-bit MONOCHROME1", photometric="MONOCHROME1"),
    Encoding("12-bit rescaled", bits=12, slope=1.0, intercept=-1024.0),
    Encoding("12-bit rescaled MONOCHROME1", photometric="MONOCHROME1", bits=12, slope=2.0, intercept=0.0),
    Encoding("12-bit windowed", bits=12, slope=2.0, intercept=-1024.0, window=True),
    Encoding("12-bit windowed MONOCHROME1", photometric="MONOCHROME1", bits=12, slope=1.0, intercept=0.0,
             window=True),
    Encoding("8-bit JPEG Baseline", jpeg=True),
)


@dataclass(frozen=True)
class TableImage:
    """One image of the table: its id, class, storage and the seed its picture is rendered from."""

    index: int
    patient_id: str
    pneumonia: bool
    encoding: Encoding
    image_seed: tuple[int, ...]
    sex: str | None = None  # PatientSex: "M", "F", or None (absent)
    age: str | None = None  # PatientAge, a DICOM Age String ("045Y", "006M", ...), or None (absent)


@dataclass(frozen=True)
class _Params:
    """Validated generation parameters; also what the marker file records."""

    seed: int = 0
    n_images: int = 240
    min_side: int = 256
    max_side: int = 512

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"synthetic_table.seed={self.seed} must be >= 0")
        if self.n_images < 1:
            raise ValueError(f"synthetic_table.n_images={self.n_images} must be >= 1")
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(f"synthetic_table: need 16 <= min_side ({self.min_side}) <= max_side ({self.max_side})")

    def marker(self) -> dict[str, object]:
        return {"format_version": FORMAT_VERSION, "params": asdict(self)}


def plan_table(seed: int = 0, n_images: int = 240) -> list[TableImage]:
    """Every image's patientId, class and encoding, decided up front (cheap, no pixels).

    Public so that tests and readers can re-render a picture from its `image_seed`.
    """
    rng = np.random.default_rng([seed, _PLAN_STREAM])
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_images)]
    positives = set(rng.choice(n_images, int(round(n_images * _POSITIVE_FRACTION)), replace=False).tolist())
    if len(set(ids)) != n_images:  # 122 random bits: never in practice, but a clash would merge two images
        raise RuntimeError(f"patientId collision for seed={seed}; use another seed")
    people = _demographics(seed, n_images)
    return [TableImage(i, ids[i], i in positives, ENCODINGS[i % len(ENCODINGS)], (seed, _IMAGE_STREAM, i),
                       *people[i]) for i in range(n_images)]


def _demographics(seed: int, n_images: int) -> list[tuple[str | None, str | None]]:
    """(PatientSex, PatientAge) per image from their own stream: ages 0-95 years, written as DICOM Age
    Strings in the unit a modality would use (days, weeks, months under 2 years), some absent or wrong."""
    rng = np.random.default_rng([seed, _ATTRIBUTE_STREAM])
    people = []
    for _ in range(n_images):
        sex = None if rng.random() < _NO_SEX else str(rng.choice(["F", "M"]))
        draw, years = rng.random(), float(rng.uniform(0, 96))
        if draw < _NO_AGE:
            age = None
        elif draw < _NO_AGE + _BAD_AGE:
            age = f"{int(rng.integers(121, 999)):03d}Y"
        elif years < 2:
            days = years * 365.25
            age = (f"{int(days):03d}D" if days < 28 else f"{int(days // 7):03d}W" if days < 112
                   else f"{int(years * 12):03d}M")
        else:
            age = f"{int(years):03d}Y"
        people.append((sex, age))
    return people


def render_picture(image: TableImage, min_side: int, max_side: int) -> np.ndarray:
    """The uint8 (height, width) gray picture a correct decoder gives back for `image`."""
    rng = np.random.default_rng(list(image.image_seed))
    return np.asarray(render_image(rng, image.pneumonia, False, min_side, max_side))


# ---- one file --------------------------------------------------------------------------------------
def _boxes(image: TableImage, height: int, width: int) -> list[tuple[float, float, float, float]]:
    """One or two (x, y, width, height) boxes over the lung zones, in pixels, for a positive image.

    The renderer's lungs sit either side of the midline, about a third of the height apart; the
    boxes fall there (lower zones more often), one per affected lung.
    """
    if not image.pneumonia:
        return []
    rng = np.random.default_rng([*image.image_seed, 1])
    sides = [-1.0, 1.0] if rng.random() < _TWO_BOXES_P else [float(rng.choice([-1.0, 1.0]))]
    half = height / 2
    boxes = []
    for side in sides:
        box_w, box_h = rng.uniform(0.25, 0.45) * half, rng.uniform(0.3, 0.7) * half
        cx, cy = width / 2 + side * rng.uniform(0.28, 0.45) * half, half + rng.uniform(-0.1, 0.4) * half
        x0, y0 = max(0.0, cx - box_w / 2), max(0.0, cy - box_h / 2)
        boxes.append((float(round(x0)), float(round(y0)), float(round(min(box_w, width - x0))),
                      float(round(min(box_h, height - y0)))))
    return boxes


def _stored(picture: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Stored values whose display (rescale, window or bit range, MONOCHROME1 inversion) is `picture`."""
    display = picture.astype(np.int64)
    if encoding.photometric == "MONOCHROME1":
        display = 255 - display  # the decoder inverts after mapping
    if encoding.bits == 8:
        return display.astype(np.uint8)
    if encoding.window:
        return (display * _WINDOW_STEP + _WINDOW_OFFSET).astype(np.uint16)
    # No window: the decoder maps the stored bits' full range 0..4095 onto 0..255, whatever the rescale.
    return np.rint(display * (_TWELVE_BIT_MAX / 255)).astype(np.uint16)


def _window(encoding: Encoding) -> tuple[float, float]:
    """Center and width (LINEAR, PS3.3 C.11.2.1.2.1) mapping the rescaled stored range onto 0..255.

    Rescaled values run from lo = slope * offset + intercept in steps of slope * 8; a width w with
    w - 1 = slope * 8 * 255 and center c = lo + 0.5 + (w - 1) / 2 gives exactly the display value.
    """
    slope, intercept = encoding.slope or 1.0, encoding.intercept or 0.0
    low = slope * _WINDOW_OFFSET + intercept
    span = slope * _WINDOW_STEP * 255
    return low + 0.5 + span / 2, span + 1


def _dataset(image: TableImage, picture: np.ndarray) -> Dataset:
    """The DICOM dataset of one image: RSNA-like header (CR chest, secondary capture) and pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage,
                             generate_uid)
    from PIL import Image

    encoding = image.encoding
    # Deterministic UIDs: the same table is byte-identical however often it is written.
    uid = {kind: generate_uid(entropy_srcs=[image.patient_id, kind]) for kind in ("study", "series", "instance")}
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid["instance"]
    meta.TransferSyntaxUID = JPEGBaseline8Bit if encoding.jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid["instance"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid["study"], uid["series"]
    ds.PatientID = ds.PatientName = image.patient_id
    ds.Modality, ds.ConversionType, ds.BodyPartExamined = "CR", "WSD", "CHEST"
    if image.sex is not None:
        ds.PatientSex = image.sex
    if image.age is not None:
        ds.PatientAge = image.age
    ds.ViewPosition = "PA" if image.index % 2 else "AP"
    ds.SeriesDescription = f"view: {ds.ViewPosition}"
    ds.ImageComments = f"synthetic table image {image.index}: {encoding.name}"
    ds.Rows, ds.Columns = picture.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, encoding.photometric
    ds.BitsAllocated = 8 if encoding.bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = encoding.bits, encoding.bits - 1, 0
    if encoding.slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = encoding.slope, encoding.intercept, "US"
    if encoding.window:
        ds.WindowCenter, ds.WindowWidth = _window(encoding)
    stored = _stored(picture, encoding)
    if encoding.jpeg:
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, "JPEG", quality=_JPEG_QUALITY)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    else:
        ds.PixelData = stored.astype(stored.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if encoding.bits == 8 else "OW"
    return ds


def _write_one(task: tuple[str, TableImage, int, int]) -> list[list[str]]:
    """Render and save one image; return its CSV rows (top-level so a process pool can call it)."""
    folder, image, min_side, max_side = task
    picture = render_picture(image, min_side, max_side)
    _dataset(image, picture).save_as(Path(folder) / f"{image.patient_id}.dcm", enforce_file_format=True)
    boxes = _boxes(image, *picture.shape)
    if not boxes:
        return [[image.patient_id, "", "", "", "", "0"]]
    return [[image.patient_id, *(f"{v:.1f}" for v in box), "1"] for box in boxes]


# ---- public API ------------------------------------------------------------------------------------
def write_synthetic_table(root: Path, *, seed: int = 0, n_images: int = 240, min_side: int = 256,
                          max_side: int = 512) -> Path:
    """Write the table into `root` (absent or empty) and finish with the marker file.

    Use `ensure_synthetic_table` for a cached, interruption-safe write; refusing a non-empty `root`
    avoids mixing stale files into a new table.
    """
    p = _Params(int(seed), int(n_images), int(min_side), int(max_side))
    root = Path(root)
    _FOLDER.begin(root)
    (root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    plan = plan_table(p.seed, p.n_images)
    tasks = [(str(root / IMAGES_DIR), image, p.min_side, p.max_side) for image in plan]
    workers = synthetic._n_workers(len(tasks))  # same rule as the folder set: 2 processes when worth it
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.map(_write_one, tasks, chunksize=8)  # ordered: the CSV follows the plan
    else:
        rows = [_write_one(task) for task in tasks]
    with (root / LABELS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(row for image_rows in rows for row in image_rows)
    counts = {"images": len(plan), "positives": sum(image.pneumonia for image in plan),
              "rows": sum(len(image_rows) for image_rows in rows)}
    _FOLDER.finish(root, {**p.marker(), "counts": counts})
    return root


def ensure_synthetic_table(root: Path, seed: int = 0, n_images: int = 240, min_side: int = 256,
                           max_side: int = 512) -> Path:
    """Make sure `root` holds the table for these parameters; return `root`.

    Nothing is written when the marker records the same parameters and FORMAT_VERSION, so every
    run after the first is free. Otherwise the table is written into a temporary sibling folder and
    renamed into place: an interrupted write never leaves a half table that looks complete, and of
    two processes racing, the loser uses the winner's folder (as `ensure_synthetic_dataset` does).
    """
    p = _Params(int(seed), int(n_images), int(min_side), int(max_side))
    return _FOLDER.ensure(Path(root), p.marker(), lambda folder: write_synthetic_table(folder, **asdict(p)))
