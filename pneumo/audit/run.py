"""`python -m pneumo.audit`'s work: build the data module, audit every split it has, write audit.md,
audit.json, files.csv and the figures into the run folder, and log them to an MLflow run tagged
pneumo.kind=audit."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pneumo.audit import figures, page
from pneumo.audit.facts import FileFacts, file_facts
from pneumo.audit.fingerprints import ImageTable, fingerprint, split_pixels
from pneumo.audit.leaks import (FAIL_ON, Pair, confirm_exact, find_pairs, relative, setup_held_out,
                                shared_patients)
from pneumo.audit.outliers import Outlier, find_outliers
from pneumo.data.labels import CLASS_NAMES


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit the data set `cfg.data` describes; returns audit.json's payload.

    The data module is set up for fit and, unless its test stage serves every image (external
    validation tables), for test: the audited splits are the ones training and evaluate.py use, with
    the same settings (val carved out of train by patient, or the val folder). Everything is written
    into `cfg.output_dir` before MLflow is called; a failure while logging ends the run FAILED and is
    raised.

    Raises:
        ValueError: audit.fail_on is not none or leak; what the data module raises for bad data settings.
    """
    settings = OmegaConf.to_container(cfg.audit, resolve=True)
    if settings["fail_on"] not in FAIL_ON:
        raise ValueError(f"audit.fail_on={settings['fail_on']!r}: choose {' or '.join(FAIL_ON)}")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    setup_held_out(datamodule)
    root = str(datamodule.root)

    table = fingerprint(datamodule, hash_size=settings["hash_size"])
    facts = [file_facts(path) for path in table.paths]
    max_distance = settings["near_max_distance"]
    pairs, nearest = find_pairs(table, max_distance)
    pairs = confirm_exact(pairs, {f.path: (f.width, f.height) if f.error is None else None for f in facts},
                          datamodule.channels, datamodule.dicom_voi)
    pairs.sort(key=lambda p: (not p.crosses, p.kind != "exact", p.distance, p.index))
    patients = shared_patients(table)
    outliers = find_outliers(table, facts, settings["outliers"]["uniform_std"], settings["outliers"]["brightness_z"],
                             tuple(settings["outliers"]["aspect"]))

    written = write_figures(datamodule, table, facts, pairs, outliers, nearest, settings, output_dir)
    payload = page.build_payload(described=datamodule.describe(), root=root, table=table, facts=facts, pairs=pairs,
                                 patients=patients, outliers=outliers, settings=settings, figures=written)
    page.write_json(payload, output_dir / "audit.json")
    page.write_markdown(payload, output_dir / "audit.md", settings["listed"])
    write_files_csv(output_dir / "files.csv", table, facts, nearest, root)
    print(f"{page.verdict(payload)}\naudit: {output_dir / 'audit.md'}")
    if cfg.get("logger"):
        log_to_mlflow(cfg, payload, output_dir)
    return payload


def leak_failure(fail_on: str, payload: dict[str, Any], output_dir: str | Path) -> str | None:
    """The one-line message to exit with under audit.fail_on=leak when anything crosses splits, else None."""
    leaks = payload["leaks"]
    if fail_on != "leak" or not leaks["total"]:
        return None
    return (f"audit.fail_on=leak: {leaks['image_pairs']} image pair(s) and {leaks['patients']} patient(s) cross "
            f"splits; see {Path(output_dir) / 'audit.md'}")


def write_figures(datamodule: Any, table: ImageTable, facts: list[FileFacts], pairs: list[Pair],
                  outliers: list[Outlier], nearest: np.ndarray, settings: dict[str, Any],
                  output_dir: Path) -> list[str]:
    """The audit's PNGs; returns the file names written (a figure with nothing to show is left out)."""
    def pixels(indices: list[int]) -> np.ndarray:
        return np.concatenate([split_pixels(datamodule.datasets[table.splits[i]], [table.rows[i]]) for i in indices])

    def title(index: int, native: bool = False) -> str:
        fact, name = facts[index], f"{table.splits[index]}: {figures.short(table.paths[index])}"
        if not native:
            return name
        return f"{name}\n{fact.width}x{fact.height} {fact.mode}" if fact.error is None else f"{name}\nunreadable header"

    splits = list(dict.fromkeys(table.splits))
    written = [figures.plot_image_facts({s: [facts[i] for i in table.where(s)] for s in splits},
                                        {s: table.mean[table.where(s)] for s in splits},
                                        output_dir / "image_facts.png"),
               figures.plot_nearest(nearest, settings["near_max_distance"], table.hash_bits,
                                    output_dir / "nearest_distance.png")]
    shown = pairs[:settings["pairs_shown"]]
    if shown:
        captions = [f"{'LEAK ' if p.crosses else ''}{p.kind} {'/'.join(p.splits)}, pHash distance {p.distance}"
                    for p in shown]
        written.append(figures.plot_pairs(
            pixels([i for pair in shown for i in pair.index]),
            [(title(pair.index[0], True), title(pair.index[1], True)) for pair in shown], captions,
            ["tab:red" if p.crosses else "black" for p in shown], output_dir / "duplicates.png",
            f"First {len(shown)} of {len(pairs)} duplicate pairs (leaks across splits first)"))
    rng = np.random.default_rng(settings["seed"])
    for label, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(table.labels == label)
        if len(members):
            chosen = np.sort(rng.choice(members, min(settings["samples_per_class"], len(members)), replace=False))
            written.append(figures.plot_grid(
                pixels(chosen.tolist()), [title(i) for i in chosen], output_dir / f"samples_{name}.png",
                f"{len(chosen)} random {name} images of {len(members)}",
                [figures.SPLIT_COLOURS.get(table.splits[i], "black") for i in chosen]))
    top = outliers[:settings["outliers"]["shown"]]
    if top:
        written.append(figures.plot_grid(
            pixels([o.index for o in top]), [title(o.index) + "\n" + "\n".join(o.reasons) for o in top],
            output_dir / "outliers.png",
            f"First {len(top)} of {len(outliers)} outliers (decoded as training sees them)"))
    return [Path(path).name for path in written]


def write_files_csv(path: Path, table: ImageTable, facts: list[FileFacts], nearest: np.ndarray, root: str) -> Path:
    """files.csv: one row per audited image (split, file, label, patient, header facts, grey mean/std,
    exact hash, nearest pHash distance)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "path", "label", "patient", "format", "width", "height", "mode", "bits", "encoding",
                         "grey_mean", "grey_std", "exact_hash", "nearest_phash_distance"])
        for i, fact in enumerate(facts):
            writer.writerow([table.splits[i], relative(table.paths[i], root), CLASS_NAMES[table.labels[i]],
                             table.patients[i], fact.format, fact.width, fact.height, fact.mode, fact.bits,
                             fact.encoding, f"{table.mean[i]:.2f}", f"{table.std[i]:.2f}", table.exact[i],
                             "" if nearest[i] > table.hash_bits else int(nearest[i])])
    return path


def log_to_mlflow(cfg: DictConfig, payload: dict[str, Any], output_dir: Path) -> None:
    """One MLflow run (experiment logger.experiment_name, pneumo-audit by default) tagged pneumo.kind=audit:
    the config as params, counts as audit/* metrics, the leak count as tag pneumo.leaks, every written
    file under artifacts audit/; ended FINISHED, or FAILED (and raised) when logging fails."""
    from pneumo.tracking import logger as tracking

    name = payload["data"].get("name", "")
    logger = instantiate(cfg.logger, run_name=f"audit {name}", tags={"pneumo.kind": "audit"})
    try:
        tracking.log_config(logger, cfg)
        dup, leaks = payload["duplicates"], payload["leaks"]
        metrics = {f"audit/images_{split}": row["total"] for split, row in payload["counts"].items()}
        metrics |= {f"audit/{key}_pairs": dup[key] for key in ("exact_within", "exact_across", "near_within",
                                                                "near_across")}
        metrics |= {"audit/leaking_image_pairs": leaks["image_pairs"], "audit/shared_patients": leaks["patients"],
                    "audit/outliers": len(payload["outliers"])}
        logger.log_metrics({key: float(value) for key, value in metrics.items()})
        tracking.set_tag(logger, "pneumo.leaks", str(leaks["total"]))
        for path in sorted(output_dir.iterdir()):
            if path.is_file() and path.suffix in (".md", ".json", ".png", ".csv"):
                tracking.log_file(logger, path, "audit")
    except BaseException:
        tracking.end_run(logger, "FAILED")
        raise
    tracking.end_run(logger, "FINISHED")
    hint = tracking.ui_hint(logger.tracking_uri, logger.experiment_id)
    print(f"MLflow audit run {logger.run_id}. Open it with:\n{hint}")
