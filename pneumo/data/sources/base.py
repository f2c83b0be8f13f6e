"""What a data source is: where a data set's images are, what they show, whose they are, and their split.

A source reads only names and labels (folders, CSVs); it decodes nothing. `ChestXrayDataModule` asks it
for the files of the splits a stage needs, decodes them once, carves what the source left to carve,
balances and serves them. Adding a data set is one `DataSource` subclass and one file in conf/data/.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

SPLITS = ("train", "val", "test")
# A file's split when the source has none for it: the data module carves data.test_fraction of these
# (patient-grouped, stratified, seeded by seed + 1) as test and uses the rest as train.
CARVE = "carve"


@dataclass
class Listing:
    """The files a source holds for one group decoded together (a split folder, or a whole table).

    Attributes:
        group: the group's name ("train", "test", "table"): the decode pass and the first column of
            skipped_files.txt; a source returns the same name for the same files every time.
        where: the folder or CSV the group comes from, for messages.
        files: image paths, in a fixed order (the decode-once cache is keyed by it).
        labels: float32 (N,), 0.0 NORMAL, 1.0 PNEUMONIA.
        patients: the patient of each file (a patient is never on two sides of a carved split).
        splits: per file "train", "val", "test", or CARVE.
        skipped: files left out before decoding, as {"path", "reason"}; a reason ending in "(ignored)"
            (operating-system metadata, stray non-image files) never stops a run, any other (a file a
            table lists but that is missing) stops it under data.on_bad_file=error.

    Raises:
        ValueError: the lists differ in length, a label is not 0/1, or a split is unknown; names the group.
    """

    group: str
    where: str
    files: list[str]
    labels: np.ndarray
    patients: list[str]
    splits: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = [str(file) for file in self.files]
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(-1)
        lengths = {"files": len(self.files), "labels": len(self.labels), "patients": len(self.patients),
                   "splits": len(self.splits)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"listing {self.group!r} of {self.where}: files, labels, patients and splits must "
                             f"have one entry per file, got {lengths}")
        if not np.isin(self.labels, (0.0, 1.0)).all():
            raise ValueError(f"listing {self.group!r} of {self.where}: labels must be 0 (NORMAL) or 1 (PNEUMONIA), "
                             f"got {sorted(set(self.labels.tolist()) - {0.0, 1.0})[:5]}")
        unknown = sorted(set(self.splits) - {*SPLITS, CARVE})
        if unknown:
            raise ValueError(f"listing {self.group!r} of {self.where}: unknown split(s) {unknown}; "
                             f"use {', '.join(SPLITS)} or {CARVE!r}")

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, class index) pairs, as torchvision's ImageFolder lists them."""
        return [(file, int(label)) for file, label in zip(self.files, self.labels)]


class DataSource(ABC):
    """A data set's files, labels, patients and splits; no decoding, no loaders.

    Subclasses set `name` (recorded in summaries and split.json) and `root` (split.json lists files
    relative to it; the data module's `root`), and implement `listings`. Class attributes:
    `has_own_val` (whether the source can list a val split of its own, for data.val_strategy=folder),
    `evaluate_split` ("test", or "all" when the test stage serves every labelled image) and `advice`
    (how to get or fix the data, appended to errors about its content).
    """

    name: str
    root: Path
    has_own_val: bool = False
    evaluate_split: str = "test"
    advice: str = ""

    @property
    def location(self) -> str:
        """The folder or file the data set is read from: `describe()["source"]`."""
        return str(self.root)

    def prepare(self) -> None:
        """Write what must exist before listing (a demo set); called once per run, before `listings`."""

    @abstractmethod
    def listings(self, splits: frozenset[str]) -> list[Listing]:
        """The groups holding the files of `splits` (a subset of "train", "val", "test").

        Files of other splits in a returned group are not used for this stage. Called once per stage:
        `{"train"}` for fit (val is carved out of train), `{"train", "val"}` for fit with
        data.val_strategy=folder, `{"test"}` for test and predict.

        Raises:
            FileNotFoundError: the data is not where the configuration says; names the path and the fix.
        """

    def test_split(self) -> str | None:
        """How the source's own test split is made ("the test/ folder", "official lists"), or None when
        it marks its files CARVE and the data module carves data.test_fraction."""
        return None

    def facts(self) -> dict[str, Any]:
        """Source-specific entries of `describe()` (a table's label rule and counts)."""
        return {}

    def attributes(self, files: Sequence[str]) -> dict[str, list[str | None]]:
        """Raw per-image attributes (sex, age, view: `pneumo.data.attributes`) of `files`, for subgroup
        results: {attribute: [value or None per file]}; {} when the source has none (the default)."""
        return {}


def plain(value: Any) -> Any:
    """Mappings and lists (OmegaConf's DictConfig/ListConfig included) as plain dicts and lists, so a
    source pickles to DataLoader workers and compares equal to what was configured."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(item) for item in value]
    return value


def build_source(source: DataSource | Callable[..., DataSource], options: dict[str, Any]) -> DataSource:
    """The data source: `source` itself, or `source(**options)` (a DataSource class or partial), with the
    options checked against its signature first so that a wrong key is named as data.KEY.

    Raises:
        ValueError: an option the source does not take, or one it needs that is not set.
        TypeError: `source` is neither a DataSource nor something that builds one, or what it built
            sets no `name` or `root`.
    """
    if isinstance(source, DataSource):
        if options:
            raise ValueError(f"data.{', data.'.join(options)} given beside a built source ({type(source).__name__}); "
                             f"set them on the source")
        return source
    factory = source
    if not callable(factory):
        raise TypeError(f"data.source={factory!r} is not a data source: use a DataSource class, in YAML "
                        f"`source: {{_target_: pneumo.data.sources.KaggleFolder, _partial_: true}}`")
    name = getattr(getattr(factory, "func", factory), "__name__", repr(factory))
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a callable without a readable signature: let the call say what is wrong
        parameters = None
    if parameters is not None:
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes = [p.name for p in named]
        unknown = [key for key in options if key not in takes]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
            raise ValueError(f"{', '.join('data.' + key for key in unknown)}: not a setting of the data module nor "
                             f"of its source {name}; {name} takes {', '.join(takes) or 'none'}")
        missing = [p.name for p in named if p.default is p.empty and p.name not in options]
        if missing:
            raise ValueError(f"{', '.join('data.' + key for key in missing)} not set: the {name} source needs it")
    built = factory(**options)
    if not isinstance(built, DataSource):
        raise TypeError(f"data.source {name} built a {type(built).__name__}, not a pneumo.data.sources.DataSource")
    unset = [attribute for attribute in ("name", "root") if not hasattr(built, attribute)]
    if unset:
        raise TypeError(f"data source {name} does not set {' and '.join(unset)}: set them in its __init__ "
                        f"(name: the data set's name; root: the folder split.json paths are relative to)")
    return built
