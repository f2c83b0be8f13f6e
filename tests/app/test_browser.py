"""The review page in a real headless Chromium: a user picks JPEG, DICOM, text and oversized files at once and
reads, for each, what evaluate.py says of the same file (its predictions.csv), or why the file was refused.

Slow: it starts the page and runs evaluate.py (each imports torch). Set PNEUMO_REVIEW_SCREENSHOT=PATH to
also keep the screenshot (docs/review_page.png is made this way)."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image
from tests.app.conftest import UPLOAD_LIMIT_MB, ReviewServer
from tests.conftest import isolated_overrides, run_entry_point
from tests.data.test_dicom import write_dicom

pytestmark = pytest.mark.slow
DISPLAY_SIZE = 320


@pytest.fixture(scope="module")
def files(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """Three images (a PNEUMONIA and a NORMAL test JPEG, a windowed 12-bit MONOCHROME1 DICOM made from a
    third) in `images`/, and two files the page must refuse."""
    folder = tmp_path_factory.mktemp("uploads")
    images = folder / "images"
    images.mkdir()
    pneumonia = sorted((tiny_root / "test" / "PNEUMONIA").glob("*.jpeg"))
    normal = sorted((tiny_root / "test" / "NORMAL").glob("*.jpeg"))
    chosen = {"pneumonia": pneumonia[0], "normal": normal[0]}
    for key, source in chosen.items():
        chosen[key] = images / source.name
        chosen[key].write_bytes(source.read_bytes())
    gray = np.asarray(Image.open(pneumonia[1]).convert("L"), dtype=np.uint16)[::2, ::2] * 16  # 12-bit, < the limit
    chosen["dicom"] = write_dicom(images / "scan-0001.dcm", 4095 - gray, photometric="MONOCHROME1", bits_stored=12,
                                  WindowCenter="1800", WindowWidth="3000")
    chosen["text"] = folder / "notes.txt"
    chosen["text"].write_text("findings: none\n")
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000), dtype=np.uint8)
    chosen["big"] = folder / "big.png"
    Image.fromarray(noise).save(chosen["big"])
    assert chosen["big"].stat().st_size > UPLOAD_LIMIT_MB * 1e6 > chosen["dicom"].stat().st_size
    return chosen


@pytest.fixture(scope="module")
def evaluated(trained_run, files, tmp_path_factory) -> dict[str, dict[str, str]]:
    """evaluate.py's predictions.csv rows for the three images, by file name."""
    tmp = tmp_path_factory.mktemp("evaluate")
    result = run_entry_point("evaluate.py", f"ckpt={trained_run.best}", f"predict_dir={files['dicom'].parent}",
                             *isolated_overrides(tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp / "run" / "predictions.csv").open() as handle:
        return {Path(row["path"]).name: row for row in csv.DictReader(handle)}


def test_the_page_shows_evaluates_probability_and_decision_and_the_reasons(trained_run, files, evaluated, browser,
                                                                          tmp_path):
    server = ReviewServer(tmp_path / "page", str(trained_run.best), f"display_size={DISPLAY_SIZE}").start()
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 1200})
        page.set_default_timeout(60_000)  # ms; a file is answered in about a second: a missing element fails
        page.goto(server.url)
        assert trained_run.run_id in page.inner_text("#model-run")
        assert "not registered" in page.inner_text("#model-version")
        order = ["text", "big", "dicom", "normal", "pneumonia"]  # newest on top: the images end up first
        page.set_input_files("#files", [str(files[key]) for key in order])
        page.locator("article.result[data-state=done]").nth(len(order) - 1).wait_for()  # the page's CSP forbids eval

        for key in ("pneumonia", "normal", "dicom"):
            card = page.locator(f'article.result[data-file="{files[key].name}"]')
            row = evaluated[files[key].name]
            assert card.locator(".reason").count() == 0, card.inner_text()  # read, not refused
            assert card.locator(".probability").inner_text() == row["probability"], key  # both print 6 decimals
            assert card.locator(".decision").inner_text() == ("PNEUMONIA" if row["prediction"] == "1" else "NORMAL")
            widths = card.locator("img").evaluate_all("images => images.map(image => image.naturalWidth)")
            assert widths == [DISPLAY_SIZE, DISPLAY_SIZE], key  # the decoded image and the Grad-CAM overlay

        with pytest.raises(BadImageError) as error:
            read_image(files["text"], 64)
        assert page.locator('article.result[data-file="notes.txt"] .reason').inner_text() == error.value.reason
        refusal = page.locator('article.result[data-file="big.png"] .reason').inner_text()
        assert "refused" in refusal and f"max_upload_mb={UPLOAD_LIMIT_MB:g}" in refusal

        shot = page.screenshot(full_page=True)  # every card
        _keep_screenshot(shot, tmp_path / "review_page.png")
        page.close()
    finally:
        assert server.stop() == 0
    assert server.left_behind() == []


def _keep_screenshot(png: bytes, path: Path) -> None:
    """Saves the screenshot with 256 colours (a small file for the README), also at $PNEUMO_REVIEW_SCREENSHOT."""
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    assert image.width == 1000 and 1200 <= image.height <= 1500, image.size
    for target in filter(None, [path, os.environ.get("PNEUMO_REVIEW_SCREENSHOT")]):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        image.save(target, optimize=True)
