"""Bulk prediction over a folder (`pneumo.evaluation.predict.stream_folder`, `pneumo.deploy.bulk`): both runtimes
give evaluate.py's probability per file, unreadable and non-image files are listed, an interrupted run
resumes, Grad-CAM works on PyTorch and is refused on ONNX Runtime, and the command line is checked first."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.command_line import command_line_problem
from pneumo.data.readers import read_image
from pneumo.deploy.bulk import onnx_scorer
from pneumo.deploy.onnx_runtime import OnnxModel
from pneumo.evaluation.predict import stream_folder, torch_scorer
from pneumo.evaluation.prediction_log import PREDICTION_COLUMNS, ResumeError
from tests.data.test_dicom import write_dicom
from tests.deploy.onnx_helpers import exported_once, run_module

N_IMAGES = 14  # 12 JPEGs (4 in nested folders), a PNG, a DICOM


@pytest.fixture(scope="module")
def exported(trained_run, tiny_root, tmp_path_factory):
    return exported_once(trained_run, tiny_root, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def folder(tiny_root, tmp_path_factory) -> Path:
    """Images of every format, nested, beside files that are not images or cannot be read."""
    root = tmp_path_factory.mktemp("archive") / "ward"
    (root / "2024" / "march").mkdir(parents=True)
    jpegs = sorted((tiny_root / "test").rglob("*.jpeg"))
    for index, source in enumerate(jpegs[:12]):
        shutil.copy(source, (root / "2024" / "march" if index >= 8 else root) / source.name)
    Image.open(jpegs[12]).convert("L").save(root / "2024" / "scan.png")
    picture = np.asarray(Image.open(jpegs[13]).convert("L").resize((200, 180)))
    write_dicom(root / "2024" / "IM-0001-0001.dcm", picture)
    (root / "notes.txt").write_text("ward 3\n")
    (root / "2024" / "broken.jpeg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    (root / "._person1_bacteria_1.jpeg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == PREDICTION_COLUMNS
        return list(reader)


def _probabilities(path: Path) -> dict[str, float]:
    return {row["path"]: float(row["probability"]) for row in _rows(path)}


def test_both_runtimes_give_evaluates_probability_for_every_file(exported, folder, tmp_path):
    trained, onnx_path, _ = exported
    results = {}
    for name, scorer in (("torch", torch_scorer(trained, "cpu")), ("onnx", onnx_scorer(OnnxModel(onnx_path)))):
        summary = stream_folder(folder, scorer, tmp_path / name, batch_size=4, workers=2, progress=False)
        assert (summary["n_images"], summary["n_new"], summary["n_unreadable_new"]) == (N_IMAGES, N_IMAGES, 1)
        assert summary["images_per_second"] > 0
        results[name] = _probabilities(tmp_path / name / "predictions.csv")
        skipped = (tmp_path / name / "skipped_files.txt").read_text()
        assert "notes.txt\tnot an image file (ignored)" in skipped and "._person1_bacteria_1.jpeg\t" in skipped
        assert "broken.jpeg\tunreadable: " in skipped
    assert results["torch"].keys() == results["onnx"].keys()
    assert {Path(p).suffix for p in results["onnx"]} == {".jpeg", ".png", ".dcm"}
    files = sorted(results["onnx"])
    # evaluate.py's number for each file: read_image, then the PyTorch model (6 decimals in the CSV)
    expected = trained.probabilities(np.stack([read_image(f, trained.image_size, trained.channels) for f in files]))
    for name in ("torch", "onnx"):
        assert np.abs(np.array([results[name][f] for f in files]) - expected).max() <= 1e-5 + 5e-7, name
    rows = _rows(tmp_path / "onnx" / "predictions.csv")
    threshold = trained.threshold["value"]
    assert all(row["label"] == "" and row["prediction"] == str(int(float(row["probability"]) >= threshold))
               for row in rows)


class _StopAfter:
    """A scorer whose run is interrupted (Ctrl-C) after `batches` batches."""

    def __init__(self, scorer, batches: int) -> None:
        self.scorer, self.left = scorer, batches

    def __call__(self, images):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.scorer.probabilities(images)


def test_an_interrupted_run_resumes_where_it_stopped(exported, folder, tmp_path, capsys):
    _, onnx_path, _ = exported
    whole = tmp_path / "whole"
    stream_folder(folder, onnx_scorer(OnnxModel(onnx_path)), whole, batch_size=4, workers=0, progress=False)
    out = tmp_path / "interrupted"
    scorer = onnx_scorer(OnnxModel(onnx_path))
    stopping = onnx_scorer(OnnxModel(onnx_path))
    stopping.probabilities = _StopAfter(scorer, 2)
    with pytest.raises(KeyboardInterrupt):
        stream_folder(folder, stopping, out, batch_size=4, workers=2, progress=False)
    assert "run the same command with output_dir=" in capsys.readouterr().out
    done = len(_rows(out / "predictions.csv"))  # two batches of 4 files, flushed as they were scored
    assert 6 <= done <= 8
    with (out / "predictions.csv").open("a") as handle:
        handle.write(f"{folder}/half-written-row.jpeg,half")  # a kill in the middle of a row
    summary = stream_folder(folder, scorer, out, batch_size=4, workers=2, progress=False)
    assert (summary["n_new"], summary["n_images"]) == (N_IMAGES - done, N_IMAGES)
    paths = [row["path"] for row in _rows(out / "predictions.csv")]
    assert len(paths) == len(set(paths)) == N_IMAGES
    assert _probabilities(out / "predictions.csv") == _probabilities(whole / "predictions.csv")
    again = stream_folder(folder, scorer, out, batch_size=4, workers=2, progress=False)
    assert again["n_new"] == 0 and again["n_unreadable_new"] == 0  # the broken file is remembered too
    assert "already done" in capsys.readouterr().out


def test_predictions_of_another_model_or_folder_are_not_mixed_in(exported, folder, tmp_path):
    trained, onnx_path, _ = exported
    out = tmp_path / "out"
    stream_folder(folder, onnx_scorer(OnnxModel(onnx_path)), out, batch_size=8, workers=0, progress=False)
    other = onnx_scorer(OnnxModel(onnx_path))
    other.model_sha256 = "0" * 64
    with pytest.raises(ResumeError, match="model_sha256.*Pass another output_dir"):
        stream_folder(folder, other, out, batch_size=8, workers=0, progress=False)
    elsewhere = folder.parent / "elsewhere"
    (elsewhere / "x").mkdir(parents=True, exist_ok=True)
    shutil.copy(next(folder.glob("*.jpeg")), elsewhere / "x" / "a.jpeg")
    with pytest.raises(ResumeError, match="folder"):
        stream_folder(elsewhere, torch_scorer(trained, "cpu"), out, batch_size=8, workers=0, progress=False)


def test_gradcam_draws_on_torch_and_is_refused_on_onnx(exported, folder, tmp_path):
    trained, onnx_path, _ = exported
    stream_folder(folder, torch_scorer(trained, "cpu"), tmp_path / "torch", batch_size=8, workers=0,
                  gradcam_n=2, progress=False)
    assert (tmp_path / "torch" / "gradcam.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="runtime=torch"):
        stream_folder(folder, onnx_scorer(OnnxModel(onnx_path)), tmp_path / "onnx", gradcam_n=2, progress=False)
    problem = command_line_problem("predict", [f"ckpt={onnx_path}", f"predict_dir={folder}", "gradcam.on_predict=true"])
    assert problem and "gradcam.on_predict=true needs the PyTorch model" in problem


def test_command_line_mistakes_are_answered_before_any_work(exported, folder):
    _, onnx_path, _ = exported
    assert "python -m pneumo.predict needs ckpt=PATH" in command_line_problem("predict", [f"predict_dir={folder}"])
    assert "runtime=torch cannot run" in command_line_problem(
        "predict", [f"ckpt={onnx_path}", f"predict_dir={folder}", "runtime=torch"])
    assert "runtime=tensorrt is not allowed" in command_line_problem(
        "evaluate", [f"ckpt={onnx_path}", f"predict_dir={folder}", "runtime=tensorrt"])
    assert "workers=-1 is not allowed" in command_line_problem(
        "predict", [f"ckpt={onnx_path}", f"predict_dir={folder}", "workers=-1"])
    assert "format=tflite is not allowed" in command_line_problem("export", [f"ckpt={onnx_path}", "format=tflite"])
    assert "python -m pneumo.export needs ckpt=PATH" in command_line_problem("export", [])
    assert command_line_problem("predict", [f"ckpt={onnx_path}", f"predict_dir={folder}", "workers=0"]) is None


@pytest.mark.slow
def test_the_predict_entry_point_exports_runs_onnx_and_resumes(trained_run, folder, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained_run.best, ckpt)
    out = tmp_path / "out"
    first = run_module("pneumo.predict", f"ckpt={ckpt}", f"predict_dir={folder}", "runtime=onnx",
                       f"output_dir={out}", f"hydra.run.dir={tmp_path / 'h1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "exporting" in first.stdout and (out / "onnx" / "model.onnx").is_file()
    assert f"{N_IMAGES} images scored ({N_IMAGES} now, onnx" in first.stdout
    again = run_module("pneumo.predict", f"ckpt={ckpt}", f"predict_dir={folder}", "runtime=onnx",
                       f"output_dir={out}", f"hydra.run.dir={tmp_path / 'h2'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout and f"{N_IMAGES + 1} of {N_IMAGES + 1} image(s) already done" in again.stdout
    assert len(_rows(out / "predictions.csv")) == N_IMAGES


def test_a_torn_row_longer_than_the_scan_window_drops_only_that_row(tmp_path):
    from pneumo.evaluation.prediction_log import PredictionLog, _drop_torn_tail

    identity = {"folder": "/x", "model_sha256": "0" * 64, "threshold": 0.5}
    log = PredictionLog(tmp_path, identity)
    log.append(["/x/a.jpeg", "/x/b.jpeg"], [0.9, 0.1], 0.5)
    log.close()
    complete = log.csv_path.read_bytes()
    with log.csv_path.open("ab") as handle:  # a kill mid-row, the row longer than one 64 KiB scan block
        handle.write(b"/x/" + b"c" * 200_000)
    again = PredictionLog(tmp_path, identity)
    assert log.csv_path.read_bytes() == complete and again.scored == {"/x/a.jpeg", "/x/b.jpeg"}
    assert again.n_positive == 1 and again.resumed == 2
    # A header torn before its newline holds no complete line: emptied, the next append writes it anew.
    torn = tmp_path / "torn.csv"
    torn.write_bytes(b"path,patient")
    _drop_torn_tail(torn, block=4)
    assert torn.read_bytes() == b""
    header_only = tmp_path / "header.csv"
    header_only.write_bytes(b"path,patient_id\n/x/" + b"d" * 50)
    _drop_torn_tail(header_only, block=4)
    assert header_only.read_bytes() == b"path,patient_id\n"


def test_one_default_store_for_model_uris(monkeypatch):
    from pneumo.paths import PROJECT_ROOT
    from pneumo.tracking.registry import default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(None) == f"sqlite:///{PROJECT_ROOT}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(None) == "http://127.0.0.1:5000"
    assert default_tracking_uri("sqlite:///elsewhere.db") == "sqlite:///elsewhere.db"
