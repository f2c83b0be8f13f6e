"""`python -m pneumo.audit` as a user runs it: Hydra, the real data module, files written, MLflow run logged."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pneumo.config import PROJECT_ROOT
from tests.conftest import isolated_overrides

FIGURES = ("image_facts.png", "nearest_distance.png", "duplicates.png", "samples_NORMAL.png",
           "samples_PNEUMONIA.png", "outliers.png")


def run_audit(*overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The audit in a fresh interpreter, from the project folder."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", "pneumo.audit", *overrides], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _rel(planted, path: str) -> str:
    return str(Path(path).relative_to(planted.root)) if Path(path).is_absolute() else path


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    """One audit of the planted set with the default audit.fail_on (none)."""
    tmp = tmp_path_factory.mktemp("audit")
    result = run_audit("data=chest_xray", f"data.root={planted.root}", "data.val_strategy=folder",
                       *isolated_overrides(tmp))
    return tmp, result


def test_every_planted_leak_is_found_and_nothing_else(planted, audited):
    tmp, result = audited
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads((tmp / "run" / "audit.json").read_text())
    found = {tuple(pair["paths"]): pair["kind"] for pair in payload["duplicates"]["pairs"]}
    assert found == planted.pairs  # every planted pair with its kind; no pair of distinct images
    assert all(pair["crosses"] for pair in payload["duplicates"]["pairs"])
    assert payload["leaks"] == {"image_pairs": 4, "patients": 1, "total": 5,
                                "by_splits": {"train/test": 4, "train/val": 1}}
    patient, file = planted.patient
    assert [p["patient"] for p in payload["patients"]] == [patient]
    assert payload["patients"][0]["files"]["test"] == [file]
    outliers = {o["path"]: " ".join(o["reasons"]) for o in payload["outliers"]}
    assert set(outliers) == set(planted.outliers)
    assert all(word in outliers[path] for path, word in planted.outliers.items())
    assert payload["counts"]["test"]["total"] == 40 + 4 and payload["counts"]["val"]["total"] == 16 + 1
    assert payload["facts"]["train"]["bits"] == {"8": 82} and set(payload["facts"]["train"]["mode"]) == {"L", "RGB"}
    assert "LEAK: 4 image pair(s) and 1 patient(s) cross splits" in result.stdout


def test_the_page_the_figures_and_the_file_table(planted, audited):
    tmp, _ = audited
    run = tmp / "run"
    page = (run / "audit.md").read_text()
    assert page.startswith("# Data audit: chest_xray\n\n**LEAK: 4 image pair(s)")
    for original, copy in planted.pairs:
        assert f"`{original}`" in page and f"`{copy}`" in page
    assert planted.patient[0] in page and "## Outliers worth a look (2)" in page
    for name in FIGURES:
        assert f"]({name})" in page
        with Image.open(run / name) as image:
            assert image.format == "PNG" and min(image.size) > 200, name
    with (run / "files.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 82 + 17 + 44
    copy = next(row for row in rows if row["path"].endswith("IM-9002-0001.jpeg"))
    assert copy["split"] == "val" and int(copy["nearest_phash_distance"]) <= 24 and copy["width"] == "391"


def test_the_mlflow_run(audited):
    from mlflow import MlflowClient

    tmp, _ = audited
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("pneumo-audit")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["pneumo.kind"] == "audit" and run.data.tags["pneumo.leaks"] == "5"
    assert run.data.metrics["audit/leaking_image_pairs"] == 4 and run.data.metrics["audit/exact_across_pairs"] == 1
    assert run.data.params["audit.fail_on"] == "none"
    logged = {Path(item.path).name for item in client.list_artifacts(run.info.run_id, "audit")}
    assert {"audit.md", "audit.json", "files.csv", "split.json", *FIGURES} <= logged


def test_fail_on_leak_exits_1_after_writing_everything(planted, tmp_path):
    no_store = [o for o in isolated_overrides(tmp_path) if not o.startswith("logger.")]
    result = run_audit(f"data.root={planted.root}", "data.val_strategy=folder", "audit.fail_on=leak", "logger=none",
                       *no_store)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"audit.fail_on=leak: 4 image pair(s) and 1 patient(s) cross splits; "
                    f"see {tmp_path}/run/audit.md")
    assert (tmp_path / "run" / "audit.md").read_text().startswith("# Data audit")
    assert all((tmp_path / "run" / name).is_file() for name in ("audit.json", *FIGURES))
    assert not (tmp_path / "mlruns").exists()  # logger=none: no MLflow run


def test_a_dicom_table_reports_8_and_12_bit_images_and_passes_fail_on_leak(tmp_path):
    result = run_audit("data=synthetic_table", "data.synthetic_table.n_images=60", "audit.fail_on=leak",
                       *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]  # patient-grouped carve-outs: nothing crosses
    payload = json.loads((tmp_path / "run" / "audit.json").read_text())
    bits = {depth for facts in payload["facts"].values() for depth in facts["bits"]}
    modes = {mode for facts in payload["facts"].values() for mode in facts["mode"]}
    assert bits == {"8", "12"} and modes == {"MONOCHROME1", "MONOCHROME2"}
    assert {f for facts in payload["facts"].values() for f in facts["format"]} == {"DICOM"}
    assert sum(row["total"] for row in payload["counts"].values()) == 60
    assert payload["leaks"]["total"] == 0 and payload["duplicates"]["pairs"] == []
    page = (tmp_path / "run" / "audit.md").read_text()
    for split, facts in payload["facts"].items():  # the bit-depth cell of each split's row, e.g. "12 22, 8 20"
        assert f"| {', '.join(f'{depth} {n}' for depth, n in facts['bits'].items())} |" in page, split


@pytest.mark.parametrize("override, words", [("audit.fail_on=always", "audit.fail_on takes one of none, leak"),
                                             ("audit.fail_onn=leak", "unknown config key 'audit.fail_onn'")])
def test_a_mistaken_command_line_exits_2(override, words, tmp_path):
    result = run_audit(override, *isolated_overrides(tmp_path))
    assert result.returncode == 2 and words in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "audit.md").exists()
