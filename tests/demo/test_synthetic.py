"""The synthetic demo set must look like the Kaggle set on disk and carry a learnable, non-trivial signal."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from pneumo.demo import synthetic
from pneumo.demo.synthetic import (CLASSES, ensure_synthetic_dataset, MARKER_NAME, NAME_PATTERNS, SPLITS, write_synthetic_dataset)

# Small images keep every test fast; the generator renders the same anatomy at any size.
SMALL = dict(seed=7, n_train=60, n_val=16, n_test=40, min_side=64, max_side=96, rgb_fraction=0.15)


def _files(root: Path) -> dict[tuple[str, str], list[Path]]:
    return {(s, c): sorted((root / s / c).glob("*")) for s in SPLITS for c in CLASSES}


def _patient(name: str, label: str) -> str:
    """Patient key straight from the Kaggle regex, independent of the code under test."""
    m = NAME_PATTERNS[label].match(name)
    assert m, name
    return f"{label}:{m['patient']}"


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn") / "chest_xray", **SMALL)


def test_layout_counts_and_marker(small_root: Path) -> None:
    files = _files(small_root)
    assert all(p.suffix == ".jpeg" and p.is_file() for group in files.values() for p in group)
    assert sum(len(v) for v in files.values()) == SMALL["n_train"] + SMALL["n_val"] + SMALL["n_test"]
    # val is balanced like the real 16-image val split
    assert len(files["val", "NORMAL"]) == len(files["val", "PNEUMONIA"]) == 8
    marker = json.loads((small_root / MARKER_NAME).read_text())
    assert marker["params"]["seed"] == SMALL["seed"]
    assert marker["counts"] == {f"{s}/{c}": len(v) for (s, c), v in files.items()}
    assert not (small_root / ".synthetic.incomplete").exists()


def test_names_follow_kaggle_patterns(small_root: Path) -> None:
    for (_, label), paths in _files(small_root).items():
        other = NAME_PATTERNS["PNEUMONIA" if label == "NORMAL" else "NORMAL"]
        for p in paths:
            assert NAME_PATTERNS[label].match(p.name), p.name
            assert not other.match(p.name), p.name
    names = [p.name for group in _files(small_root).values() for p in group]
    assert any(n.startswith("NORMAL2-IM-") for n in names) and any(n.startswith("IM-") for n in names)
    assert any("_bacteria_" in n for n in names) and any("_virus_" in n for n in names)


def test_patients_have_several_images_and_never_cross_splits(small_root: Path) -> None:
    splits_of: dict[str, set[str]] = defaultdict(set)
    images_of: dict[str, int] = defaultdict(int)
    for (split, label), paths in _files(small_root).items():
        for p in paths:
            key = _patient(p.name, label)
            splits_of[key].add(split)
            images_of[key] += 1
    assert all(len(s) == 1 for s in splits_of.values()), "a patient appears in two splits"
    sizes = np.array(list(images_of.values()))
    assert sizes.max() <= 4 and (sizes > 1).sum() >= 5
    assert (sizes <= 3).mean() > 0.8


def test_default_plan_matches_the_real_set_shape() -> None:
    """Plan only (no rendering): counts and ratio of the default 816-image set."""
    params = synthetic._Params.make(seed=0, n_train=600, n_val=16, n_test=200, normal_fraction=0.26,
                                    min_side=512, max_side=1024, rgb_fraction=0.1, quality=90)
    items = synthetic._plan(params)
    assert len(items) == 816
    by = defaultdict(int)
    for it in items:
        by[it.split, it.label] += 1
    assert (by["val", "NORMAL"], by["val", "PNEUMONIA"]) == (8, 8)
    for split, n in (("train", 600), ("test", 200)):
        assert abs(by[split, "NORMAL"] / n - 0.26) < 0.01
    assert abs(sum(it.rgb for it in items) / 816 - 0.1) < 0.01
    assert len({it.name for it in items}) == 816


def test_modes_and_sizes(small_root: Path) -> None:
    modes, aspects = [], []
    for group in _files(small_root).values():
        for p in group:
            with Image.open(p) as im:
                assert im.format == "JPEG"
                modes.append(im.mode)
                w, h = im.size
                assert SMALL["min_side"] <= w <= SMALL["max_side"] and SMALL["min_side"] <= h <= SMALL["max_side"]
                aspects.append(w / h)
                if im.mode == "RGB":  # grayscale content in three channels, at most a faint tint
                    a = np.asarray(im, dtype=np.float32)
                    assert np.abs(a - a.mean(axis=2, keepdims=True)).mean() < 6
    assert set(modes) == {"L", "RGB"}
    assert 0.05 < modes.count("RGB") / len(modes) < 0.3
    assert min(aspects) < 0.95 and max(aspects) > 1.05  # not all square


def test_same_params_give_identical_bytes(tmp_path: Path) -> None:
    params = dict(SMALL, n_train=10, n_val=2, n_test=4)
    a = write_synthetic_dataset(tmp_path / "a", **params)
    b = write_synthetic_dataset(tmp_path / "b", **params)
    fa, fb = _files(a), _files(b)
    assert [p.name for g in fa.values() for p in g] == [p.name for g in fb.values() for p in g]
    for key in fa:
        for pa, pb in zip(fa[key], fb[key]):
            assert pa.read_bytes() == pb.read_bytes(), pa.name
    c = write_synthetic_dataset(tmp_path / "c", **dict(params, seed=params["seed"] + 1))
    assert [p.read_bytes() for g in _files(c).values() for p in g] != \
        [p.read_bytes() for g in fa.values() for p in g]


def test_process_pool_does_not_change_the_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-image seeding: rendering in 2 processes writes what 1 process writes."""
    params = dict(SMALL, n_train=40, n_val=4, n_test=8)
    monkeypatch.setattr(synthetic, "_n_workers", lambda n: 1)
    serial = write_synthetic_dataset(tmp_path / "serial", **params)
    monkeypatch.setattr(synthetic, "_n_workers", lambda n: 2)
    pooled = write_synthetic_dataset(tmp_path / "pooled", **params)
    for key, paths in _files(serial).items():
        assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in _files(pooled)[key]]


def test_ensure_writes_once_and_rewrites_on_new_params(tmp_path: Path) -> None:
    params = dict(SMALL, n_train=8, n_val=2, n_test=4)
    root = ensure_synthetic_dataset(tmp_path / "set", **params)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ensure_synthetic_dataset(tmp_path / "set", **params) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps

    ensure_synthetic_dataset(root, **dict(params, n_train=12))
    assert json.loads((root / MARKER_NAME).read_text())["params"]["n_train"] == 12
    assert sum(len(v) for v in _files(root).values()) == 12 + 2 + 4
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary or old folders left


def test_interrupted_write_leaves_nothing_that_looks_complete(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write(task):
        calls.append(task)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(task)

    real_write = synthetic._write_one
    monkeypatch.setattr(synthetic, "_write_one", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(tmp_path / "set", **dict(SMALL, n_train=10, n_val=2, n_test=4))
    assert list(tmp_path.iterdir()) == []


def test_racing_writers_agree(tmp_path: Path) -> None:
    params = dict(SMALL, n_train=10, n_val=2, n_test=4)
    with ThreadPoolExecutor(2) as pool:
        roots = list(pool.map(lambda _: ensure_synthetic_dataset(tmp_path / "set", **params), range(2)))
    assert roots[0] == roots[1]
    assert sum(len(v) for v in _files(roots[0]).values()) == 16
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    real = tmp_path / "chest_xray"
    (real / "train" / "NORMAL").mkdir(parents=True)
    (real / "train" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"real data")
    with pytest.raises(FileExistsError):
        ensure_synthetic_dataset(real, **dict(SMALL, n_train=4, n_val=2, n_test=2))
    assert (real / "train" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes() == b"real data"


def test_signal_is_learnable_but_not_a_global_statistic(tmp_path: Path) -> None:
    """Mean intensity alone must not separate the classes; a linear model on thumbnails must."""
    root = write_synthetic_dataset(tmp_path / "set", seed=11, n_train=200, n_val=0, n_test=200,
                                   normal_fraction=0.5, min_side=96, max_side=128)

    def load(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        thumbs, labels, means = [], [], []
        for label, y in (("NORMAL", 0), ("PNEUMONIA", 1)):
            for p in sorted((root / split / label).glob("*.jpeg")):
                with Image.open(p) as im:
                    gray = im.convert("L")
                    means.append(np.asarray(gray, dtype=np.float32).mean())
                    t = np.asarray(gray.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
                thumbs.append((t - t.mean()) / (t.std() + 1e-6))
                labels.append(y)
        return np.array(thumbs), np.array(labels), np.array(means)

    x_train, y_train, m_train = load("train")
    x_test, y_test, m_test = load("test")
    mean_auroc = roc_auc_score(y_test, m_test)
    assert max(mean_auroc, 1 - mean_auroc) < 0.75, mean_auroc  # either direction would be a shortcut
    clf = LogisticRegression(C=0.01, max_iter=2000).fit(x_train, y_train)
    assert roc_auc_score(y_test, clf.decision_function(x_test)) > 0.65


def test_invalid_params_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "x", min_side=200, max_side=100)
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "y", normal_fraction=1.5)
    with pytest.raises(FileExistsError):
        (tmp_path / "z").mkdir()
        (tmp_path / "z" / "stale.txt").write_text("x")
        write_synthetic_dataset(tmp_path / "z", n_train=2, n_val=0, n_test=0)


def test_name_patterns_reject_lookalikes() -> None:
    assert NAME_PATTERNS["NORMAL"].match("NORMAL2-IM-1427-0001.jpeg")
    assert not NAME_PATTERNS["NORMAL"].match("IM-115-0001.jpeg")
    assert NAME_PATTERNS["PNEUMONIA"].match("person1946_bacteria_4874.jpeg")
    assert not NAME_PATTERNS["PNEUMONIA"].match("person1946_fungus_4874.jpeg")
    assert all(isinstance(p, re.Pattern) for p in NAME_PATTERNS.values())
