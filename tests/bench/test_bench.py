"""`python -m pneumo.bench`: one JSON line with every figure, and an import chain free of MLflow/Hydra."""
from __future__ import annotations

import csv
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo.bench
from pneumo.bench.cli import parse_args
from pneumo.bench.folder import default_data_root
from pneumo.bench.measure import decode_plain, fixed_sample
from pneumo.bench.models import ModelSpec
from pneumo.bench.table_data import (default_table_root, ensure_bench_table, NIH_COLUMNS, NIH_CSV, NIH_LABEL,
                                     NIH_OFFICIAL_SPLIT)
from pneumo.data.readers import read_image
from pneumo.demo.synthetic import ensure_synthetic_dataset
from pneumo.data.tables import read_table

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Written out here, not taken from pneumo.bench, so that dropping a key from the bench fails a test.
REQUIRED_KEYS = (
    "ceiling_img_s", "cold_img_s", "warm_img_s", "warm_over_ceiling", "cold_over_ceiling",
    "decode_plain_img_s", "decode_draft_img_s", "prepare_s", "prepare_workers", "peak_rss_mb",
    "peak_rss_children_mb", "cache_mb", "n_images", "image_size", "batch_size", "precision", "device",
    "torch",
)
RATES = ("ceiling_img_s", "cold_img_s", "warm_img_s", "decode_plain_img_s", "decode_draft_img_s")
# Top-level packages the bench must run without. OmegaConf is allowed: the bench reads conf/model with it.
FORBIDDEN = ("mlflow", "hydra")
# pneumo's modules bound to MLflow or Hydra: importing any of them from the bench would bring those back.
FORBIDDEN_PNEUMO = ("pneumo.config", "pneumo.tracking", "pneumo.training.run", "pneumo.training.sweep",
                    "pneumo.models.factory", "pneumo.evaluation.run")
# Runs the bench as `python -m pneumo.bench` would, with MLflow and Hydra made unimportable, as on a GPU
# machine that has only torch, torchvision, lightning, torchmetrics, Pillow and OmegaConf; and pneumo's
# modules bound to them too, so that an import made only while running (not on import) is caught.
BLOCKED_RUN = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN!r} or any(name == f or name.startswith(f + ".") for f in {FORBIDDEN_PNEUMO!r}):
            raise ModuleNotFoundError(f"blocked by the test: {{name}}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv[0] = "pneumo.bench"
runpy.run_module("pneumo.bench", run_name="__main__", alter_sys=True)
"""
N_IMAGES = 40
TABLE_REQUIRED_KEYS = (
    "ceiling_img_s", "warm_img_s", "warm_over_ceiling", "first_epoch_img_s", "prepare_s", "table_read_s",
    "cache_build_s", "prepare_img_s", "prepare_workers", "decode_img_s", "peak_rss_mb", "peak_rss_anon_mb",
    "prepare_peak_rss_anon_mb", "peak_rss_children_mb", "decode_workers_peak_private_mb", "cache_mb",
    "n_rows", "n_images", "n_train", "n_val", "table_side", "nih_side", "image_size", "batch_size",
    "batches_per_epoch", "precision", "device", "torch",
)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("bench") / "chest_xray", seed=5, n_train=N_IMAGES,
                                    n_val=0, n_test=0, min_side=96, max_side=160)


def _python(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    # No wall-time limit of its own: the work is bounded by the arguments, and pytest-timeout (pytest.ini)
    # catches a hang; a loaded machine must not fail a correct run.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_bench_prints_one_json_line_with_every_figure(bench_root):
    run = _python("-c", BLOCKED_RUN, "--data-root", str(bench_root), "--image-size", "64", "--epochs", "2",
                  "--batch-size", "8", "--ceiling-seconds", "0.3", "--decode-sample", "20", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout[-3000:]  # progress and Lightning's chatter go to stderr
    result = json.loads(lines[0])

    missing = [key for key in REQUIRED_KEYS if key not in result]
    assert not missing, missing
    for key in RATES:
        assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
    for rate in ("warm", "cold"):
        ratio = result[f"{rate}_over_ceiling"]
        assert math.isclose(ratio, result[f"{rate}_img_s"] / result["ceiling_img_s"], rel_tol=1e-3), rate
    # The ceiling is the mean of its bursts: one before the cache build, one after each epoch.
    samples = result["ceiling_samples_img_s"]
    assert len(samples) == 3 and all(math.isfinite(r) and r > 0 for r in samples)
    assert result["ceiling_img_s"] == pytest.approx(sum(samples) / len(samples), rel=1e-3)

    assert (result["n_images"], result["image_size"], result["batch_size"]) == (N_IMAGES, 64, 8)
    assert result["n_train"] + result["n_val"] == N_IMAGES and result["n_train"] > result["n_val"] > 0
    assert len(result["epoch_s"]) == 2 and all(s > 0 for s in result["epoch_s"])
    assert len(result["epoch_over_local_ceiling"]) == 2 and all(r > 0 for r in result["epoch_over_local_ceiling"])
    assert result["precision"] == "32-true" and result["torch"]
    assert result["cache_mb"] == pytest.approx(N_IMAGES * 64 * 64 / 2 ** 20, abs=1e-3)
    assert result["prepare_s"] > 0 and result["prepare_workers"] >= 1
    assert result["peak_rss_mb"] > 0 and result["peak_rss_children_mb"] >= 0
    assert result["decode_sample"] == 20
    assert isinstance(result["loader_workers"], int) and result["loader_workers"] >= 0


def _forbidden_modules_after_importing(modules: list[str]) -> list[str]:
    """In a fresh interpreter, import `modules`; the forbidden modules that came with them."""
    probe = (f"import importlib, json, sys\n"
             f"for name in {modules!r}: importlib.import_module(name)\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or any("
             f"m == f or m.startswith(f + '.') for f in {FORBIDDEN_PNEUMO!r}))))")
    run = _python("-c", probe)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_importing_the_bench_pulls_in_no_mlflow_or_hydra():
    # Every module of the package, found on disk, so that a new one is checked too (not __main__: it runs).
    modules = sorted(f"pneumo.bench.{m.name}" for m in pkgutil.iter_modules(pneumo.bench.__path__)
                     if m.name != "__main__")
    assert {f"pneumo.bench.{m}" for m in ("cli", "folder", "table", "table_data", "measure", "machine",
                                          "models", "pipeline", "memory")} <= set(modules), modules
    assert _forbidden_modules_after_importing(["pneumo.bench", *modules]) == []
    # The probe does see them: pneumo.config is what the bench used to pull in for the project root.
    assert "pneumo.config" in _forbidden_modules_after_importing(["pneumo.config"])


def test_plain_decode_is_a_fair_comparison_for_draft_decode(bench_root):
    files = sorted((bench_root / "train").rglob("*.jpeg"))[:4]
    for file in files:
        plain, draft = decode_plain(file, 64), read_image(file, 64)
        assert plain.shape == draft.shape == (1, 64, 64) and plain.dtype == draft.dtype == np.uint8
        # Same picture: draft mode changes the resampling path, not the content.
        assert np.abs(plain.astype(float) - draft.astype(float)).mean() < 8


def test_decode_sample_is_fixed_and_spread_over_the_list():
    files = [Path(f"{i:04d}.jpeg") for i in range(1000)]
    sample = fixed_sample(files, 100)
    assert sample == fixed_sample(files, 100) and len(set(sample)) == 100
    assert sample[0] == files[0] and sample[-1].name >= "0990.jpeg"
    assert fixed_sample(files[:7], 100) == files[:7]


def test_command_line_defaults_and_refusals():
    args = parse_args([])
    assert (args.n_images, args.image_size, args.batch_size, args.epochs) == (1000, 128, 32, 3)
    assert (args.device, args.channels_last, args.workers, args.cache) == ("auto", True, "auto", "memory")
    assert args.table is None
    assert parse_args(["--no-channels-last", "--workers", "0"]).channels_last is False
    table = parse_args(["--table", "100000"])
    assert (table.table, table.table_side, table.table_batches, table.cache) == (100000, 256, 100, "disk")
    for bad in (["--epochs", "1"], ["--workers", "-1"], ["--cache", "none"], ["--precision", "64"],
                ["--table", "10"], ["--table", "100", "--cache", "memory"], ["--table", "100", "--data-root", "x"],
                ["--table", "100", "--table-batches", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_bench_finds_the_project_and_reads_every_model_config():
    # One project root (pneumo.paths): the bench's data sets go under <project>/.cache, not under pneumo/.
    assert default_data_root(300) == PROJECT_ROOT / ".cache" / "bench-synthetic-300"
    assert default_table_root(100, 256) == PROJECT_ROOT / ".cache" / "bench-table-100-256"
    names = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml"))
    assert "baseline" in names and "resnet50" in names
    for name in names:  # each read alone, with OmegaConf: the interpolations into data/ are left unresolved
        spec = ModelSpec.read(name)
        assert spec.name == name and spec.image_size >= 8, spec
        assert spec.mean is None or (len(spec.mean) == len(spec.std) == 3), spec
    baseline, resnet50 = ModelSpec.read("baseline"), ModelSpec.read("resnet50")
    assert (baseline.image_size, baseline.mean, baseline.std, baseline.backbone) == (128, None, None, None)
    assert (resnet50.image_size, resnet50.backbone) == (224, "resnet50")
    assert resnet50.mean == pytest.approx([0.485, 0.456, 0.406]) and resnet50.std == pytest.approx([0.229, 0.224, 0.225])


def test_model_config_faults_end_with_a_message_naming_the_file(tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "sizeless.yaml").write_text("net:\n  _target_: pneumo.models.seed_cnn.SeedCNN\nmean: null\n")
    (conf / "model" / "alien.yaml").write_text("net:\n  _target_: elsewhere.Net\nimage_size: 64\n")
    (conf / "model" / "interpolated.yaml").write_text(
        "net:\n  _target_: pneumo.models.seed_cnn.SeedCNN\nimage_size: ${data.image_size}\n")
    for name, words in (("sizeless", "image_size"), ("alien", "elsewhere.Net"), ("interpolated", "data.image_size"),
                        ("missing", "choose one of alien, interpolated, sizeless")):
        with pytest.raises(SystemExit) as error:
            ModelSpec.read(name, config_dir=conf)
        assert f"--model {name}" in str(error.value) and words in str(error.value), str(error.value)


def test_command_line_mistakes_end_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / "train").mkdir()
    for args, words in ((["--data-root", str(tmp_path)], f"no training images under {tmp_path / 'train'}"),
                        (["--data-root", str(tmp_path / "nowhere")], "no training images under"),
                        (["--model", "vgg99"], "choose one of")):
        run = _python("-m", "pneumo.bench", *args, "--device", "cpu", "--ceiling-seconds", "0.1")
        assert run.returncode != 0 and words in run.stderr, run.stderr[-3000:]
        assert "Traceback" not in run.stderr and run.stdout == "", run.stderr[-3000:]


def test_table_bench_prints_one_json_line_with_every_figure(tmp_path):
    root = tmp_path / "nih"
    run = _python("-c", BLOCKED_RUN, "--table", "60", "--table-root", str(root), "--table-side", "64",
                  "--image-size", "64", "--batch-size", "8", "--epochs", "2", "--table-batches", "3",
                  "--ceiling-seconds", "0.3", "--decode-sample", "10", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout[-3000:]
    result = json.loads(lines[0])

    missing = [key for key in TABLE_REQUIRED_KEYS if key not in result]
    assert not missing, missing
    # Every measured figure is a positive, finite number; only these may be 0 or absent.
    may_be_zero_or_none = {"loader_workers", "decode_workers_peak_private_mb", "write_workers_peak_private_mb"}
    numbers = {key: value for key, value in result.items() if key not in may_be_zero_or_none
               and isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert {"ceiling_img_s", "warm_img_s", "prepare_s", "peak_rss_anon_mb", "write_s"} <= set(numbers), result
    for key, value in numbers.items():
        assert math.isfinite(value) and value > 0, (key, value)
    for key in ("epoch_s", "ceiling_samples_img_s"):
        assert result[key] and all(math.isfinite(v) and v > 0 for v in result[key]), (key, result[key])

    assert result["warm_over_ceiling"] == pytest.approx(result["warm_img_s"] / result["ceiling_img_s"], rel=1e-3)
    assert result["epoch_images"] == [3 * 8, 3 * 8] and result["batches_per_epoch"] == 3
    # NIH's preset keeps Pneumonia and No Finding only; the official test list holds out whole patients.
    assert result["n_rows"] == 60 and 0 < result["n_images"] < 60
    assert 0 < result["n_val"] < result["n_train"] and result["n_train"] + result["n_val"] < result["n_images"]
    assert result["cache"] == "disk" and result["cache_mb"] == pytest.approx(result["n_images"] * 64 * 64 / 2 ** 20,
                                                                             abs=1e-3)
    assert result["prepare_s"] == pytest.approx(result["table_read_s"] + result["cache_build_s"], abs=2e-3)
    assert result["prepare_peak_rss_anon_mb"] <= result["peak_rss_anon_mb"] < result["peak_rss_mb"]
    # Under 64 images the cache decodes in this process: no decode worker may be reported.
    assert result["prepare_workers"] == 1 and result["decode_workers_peak_private_mb"] is None
    assert (result["table_side"], result["nih_side"]) == (64, 1024) and "1024x1024" in result["side_note"]
    assert not [p for p in root.iterdir() if p.name.startswith("cache-")]  # the bench's cache is removed


def test_table_set_is_written_once_in_nih_layout_and_resumes(tmp_path):
    root = tmp_path / "nih"
    assert ensure_bench_table(root, 120, 32) > 0
    assert ensure_bench_table(root, 120, 32) is None  # written once

    with open(root / NIH_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == NIH_COLUMNS and len(rows) == 120
    names = [row["Image Index"] for row in rows]
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", name) for name in names) and len(set(names)) == 120
    assert all(name.startswith(f"{int(row['Patient ID']):08d}_") for name, row in zip(names, rows))
    per_patient = {row["Patient ID"] for row in rows}
    assert len(per_patient) < 60  # several images per patient, as in NIH
    findings = [row["Finding Labels"] for row in rows]
    assert "No Finding" in findings and any("Pneumonia" in f for f in findings)
    assert any(f != "No Finding" and "Pneumonia" not in f for f in findings)  # other findings, to be excluded
    with Image.open(root / "images" / names[0]) as image:
        assert (image.mode, image.size, image.format) == ("L", (32, 32), "PNG")

    # The official lists split by patient and cover every image once.
    lists = {side: (root / name).read_text().split() for side, name in NIH_OFFICIAL_SPLIT.items()}
    assert sorted(lists["train"] + lists["test"]) == sorted(names) and lists["test"]
    assert not {n.split("_")[0] for n in lists["train"]} & {n.split("_")[0] for n in lists["test"]}
    # NIH's preset reads it: the usable images are those with Pneumonia or No Finding only.
    records = read_table(root / NIH_CSV, root / "images", id_column="Image Index", file_template="{Image Index}",
                         label=NIH_LABEL, patient_column="Patient ID", official_split=NIH_OFFICIAL_SPLIT)
    usable = [f for f in findings if f == "No Finding" or "Pneumonia" in f.split("|")]
    assert len(records) == len(usable) and records.labels.sum() == sum("Pneumonia" in f for f in usable)

    # Interrupted (a file and the marker gone): a rerun writes the missing file and keeps the rest.
    kept = root / "images" / names[1]
    mtime = kept.stat().st_mtime_ns
    (root / "images" / names[0]).unlink()
    (root / ".bench_table.json").unlink()
    assert ensure_bench_table(root, 120, 32) > 0
    assert (root / "images" / names[0]).is_file() and kept.stat().st_mtime_ns == mtime


def test_bench_trains_a_pretrained_backbone_at_its_config_input_size(bench_root):
    run = _python("-c", BLOCKED_RUN, "--data-root", str(bench_root), "--model", "efficientnet_lite0", "--epochs", "2",
                  "--batch-size", "4", "--ceiling-seconds", "0.2", "--decode-sample", "4", "--device", "cpu")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["model"] == "efficientnet_lite0" and result["image_size"] == 224  # from conf/model
    assert result["cache_mb"] == pytest.approx(N_IMAGES * 224 * 224 / 2 ** 20, abs=1e-3)
    for key in ("ceiling_img_s", "warm_img_s", "cold_img_s"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    unknown = _python("-m", "pneumo.bench", "--model", "vgg99", "--device", "cpu")
    assert unknown.returncode != 0 and "choose one of" in unknown.stderr and "resnet50" in unknown.stderr
