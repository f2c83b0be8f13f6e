"""Header facts of real image files, and the outlier rules."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumo.audit.facts import file_facts, summarize
from pneumo.audit.fingerprints import ImageTable
from pneumo.audit.outliers import find_outliers, robust_z


def test_header_facts_of_pillow_files(tmp_path):
    Image.new("L", (300, 200), 90).save(tmp_path / "grey.jpeg", quality=90)
    Image.new("RGB", (120, 160), (10, 20, 30)).save(tmp_path / "colour.jpeg", quality=90)
    Image.fromarray(np.full((50, 70), 3000, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    turned = Image.new("L", (400, 100), 50)
    exif = turned.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    turned.save(tmp_path / "turned.jpeg", exif=exif)
    (tmp_path / "notes.jpeg").write_text("not an image")

    grey, colour, sixteen, shown, bad = (file_facts(tmp_path / name) for name in
                                         ("grey.jpeg", "colour.jpeg", "sixteen.png", "turned.jpeg", "notes.jpeg"))
    assert (grey.format, grey.width, grey.height, grey.mode, grey.bits) == ("JPEG", 300, 200, "L", 8)
    assert (colour.mode, colour.bits, round(colour.aspect, 2)) == ("RGB", 8, 0.75)
    assert (sixteen.format, sixteen.mode, sixteen.bits) == ("PNG", "I;16", 16)
    assert (shown.width, shown.height) == (100, 400)  # as a viewer shows it
    assert bad.format == "unreadable" and bad.error and bad.bits is None

    summary = summarize([grey, colour, sixteen, shown, bad])
    assert summary["files"] == 5 and summary["unreadable"] == 1
    assert summary["bits"] == {"8": 3, "16": 1}
    assert summary["width"] == {"min": 70, "median": 110, "max": 300}


def _table(means: list[float], stds: list[float]) -> ImageTable:
    n = len(means)
    return ImageTable(splits=["train"] * n, rows=np.arange(n), paths=[f"/x/{i}.png" for i in range(n)],
                      labels=np.zeros(n, dtype=np.int64), patients=[str(i) for i in range(n)], exact=[""] * n,
                      phash=np.zeros((n, 4), dtype=np.uint64), mean=np.array(means, dtype=np.float32),
                      std=np.array(stds, dtype=np.float32), image_size=128, hash_bits=256)


def test_outliers_uniform_brightness_and_aspect(tmp_path):
    rng = np.random.default_rng(0)
    means = list(100 + rng.normal(0, 8, 30)) + [248.0, 100.0, 100.0]
    stds = [40.0] * 31 + [1.5, 40.0]
    sizes = [(500, 500)] * 32 + [(1200, 400)]
    for i, size in enumerate(sizes):
        Image.new("L", size, 100).save(tmp_path / f"{i}.png")
    facts = [file_facts(tmp_path / f"{i}.png") for i in range(len(sizes))]
    found = {o.index: o.reasons for o in find_outliers(_table(means, stds), facts)}
    assert set(found) == {30, 31, 32}
    assert found[30][0].startswith("bright (mean grey 248")
    assert found[31] == ("nearly uniform (grey-level std 1.5)",)
    assert found[32] == ("aspect ratio 3.00 (1200x400)",)
    with pytest.raises(ValueError, match="facts"):
        find_outliers(_table(means, stds), facts[:3])


def test_robust_z_ignores_the_outliers_it_measures():
    z = robust_z(np.array([10, 11, 12, 11, 10, 12, 11, 200.0]))
    assert z[-1] > 100 and np.all(np.abs(z[:-1]) < 1.5)
    assert not robust_z(np.full(5, 7.0)).any()  # no spread: nothing stands out
