"""Champion/challenger promotion: `python -m pneumo.promote name=pneumo version=N data=...`.

The challenger (registered version N) and the current champion (the version the alias `champion`
names) are scored on the same images, the test split of the data config, through the same path as
evaluate.py (`pneumo.evaluation.run.checkpoint_data_config`, the data module's test loader and
`TrainedModel.probabilities`: the checkpoint's preprocessing and temperature). The alias moves to the
challenger when its AUROC is not worse.

The rule, and why. d = AUROC(challenger) - AUROC(champion) on the same images; its 95% interval is a
paired, stratified bootstrap (`pneumo.evaluation.metrics.stratified_bootstrap_indices`: each resample
draws the same images for both models, so what the two models share cancels out and the interval is far
narrower than two separate ones). `rule=point` (the default) promotes when d >= -margin (margin 0 by
default: the challenger is at least as good on this set). A test set of a few hundred images gives an
interval several AUROC points wide, so demanding its lower end above 0 (superiority) would almost never
promote a retrained model, and the newest model carries the newest data; the interval is printed and
recorded so that a reader sees how sure the decision is. `rule=interval` is the strict non-inferiority
test: promote when the interval's lower end >= -margin (e.g. margin=0.01: not more than one AUROC point
worse, at 95% confidence).

With no champion yet the challenger becomes champion (scored and recorded all the same). `force=true`
moves the alias whatever the figures say and tags the version `pneumo.promotion=forced`. Every decision
(promoted, rejected, forced, first champion) is written as tags on the challenger's version: both AUROCs,
the difference, its interval, the rule and the data; and as promotion.json in the run folder.

Neither model may be scored on images it trained on (`held_out_problem`, checked on each checkpoint's
stored training config before any scoring). A Kaggle folder's test/ and a table's official lists
(data.official_split) are fixed, so any seed is fine. A label table without official lists carves its test
split from the seed (data.test_fraction, seeded by seed + 1): a model trained on this same table (same
data.csv) with another seed or test_fraction held out other images, so the promotion refuses, naming the
version and the fix (seed=N). So does data.evaluate_split=all on a model's own table. A model trained on
another data set is scored as an external check (its source differs: no known overlap). The alias is read
again just before it moves: if another promotion moved it meanwhile, nothing is moved
(`registry.AliasMovedError`).
"""
from __future__ import annotations

import json
import logging
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from pneumo.deploy import registry
from pneumo.evaluation.metrics import rowwise_auroc_auprc, stratified_bootstrap_indices
from pneumo.evaluation.run import checkpoint_data_config, describe_data_config
from pneumo.evaluation.trained import TrainedModel, load_trained
from pneumo.tracking.registry import resolve_model_checkpoint

log = logging.getLogger(__name__)

RULES = ("point", "interval")


def paired_auroc_difference(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
                            n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """AUROC of both models, their difference (challenger - champion) and its percentile (1 - alpha)
    interval from a paired, stratified bootstrap: row r of the index matrix picks the same images for
    both models. Labels 0/1 (n,), probabilities (n,) each. Returns plain floats.

    Raises:
        ValueError: lengths differ, or the labels hold one class only (AUROC is not defined).
    """
    labels, challenger, champion = (np.asarray(a).ravel() for a in (labels, challenger, champion))
    if not labels.size == challenger.size == champion.size:
        raise ValueError(f"labels ({labels.size}), challenger ({challenger.size}) and champion ({champion.size}) "
                         f"scores must cover the same images")
    if np.unique(labels).size < 2:
        raise ValueError(f"the test split holds one class only ({labels.size} images): AUROC is not defined, "
                         f"so the models cannot be compared; use data with both classes")
    point_challenger, _ = rowwise_auroc_auprc(labels[None], challenger[None])
    point_champion, _ = rowwise_auroc_auprc(labels[None], champion[None])
    idx = stratified_bootstrap_indices(labels, n_resamples, seed)
    resampled = labels[idx]
    difference = rowwise_auroc_auprc(resampled, challenger[idx])[0] - rowwise_auroc_auprc(resampled, champion[idx])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(difference, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"auroc_challenger": float(point_challenger[0]), "auroc_champion": float(point_champion[0]),
            "difference": float(point_challenger[0] - point_champion[0]), "interval_low": float(low),
            "interval_high": float(high), "confidence": 1 - alpha, "n_resamples": int(n_resamples)}


def decide(comparison: dict[str, float], rule: str = "point", margin: float = 0.0) -> bool:
    """Whether the challenger is not worse: `point`: difference >= -margin; `interval`: the interval's
    lower end >= -margin. Raises ValueError for another rule or a negative margin."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: choose point (the difference's estimate) or interval (its lower end)")
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0 (how much worse the challenger may be, in AUROC)")
    value = comparison["difference"] if rule == "point" else comparison["interval_low"]
    return value >= -margin


def _test_split_key(data: DictConfig) -> tuple[Any, ...]:
    """What decides a data config's test split: a Kaggle folder's test/ (fixed), a table's official lists
    (fixed), or a table's carved share (data.test_fraction, the seed); plus data.evaluate_split."""
    if not data.get("csv"):
        return ("test/ folder",)
    official = data.get("official_split")
    if official:
        return ("official lists", str(dict(official)), str(data.get("evaluate_split", "test")))
    return ("carved", int(data.seed), float(data.get("test_fraction", 0.2)), str(data.get("evaluate_split", "test")))


def held_out_problem(version: str, train_config: DictConfig, data: DictConfig) -> str | None:
    """Why version `version` (trained with `train_config`, its checkpoint's stored config) would be scored
    partly on its own training images by the test split of `data`, or None when it would not: its training
    data is another data set, or the split is fixed (folder or official lists) and is the one it held out, or
    the carved split uses its seed and test_fraction. The message names the version, its seed and the fix."""
    trained = train_config.data
    if describe_data_config(trained)["source"] != describe_data_config(data)["source"]:
        return None  # another data set: an external check
    ours, its = _test_split_key(data), _test_split_key(trained)
    if ours[0] == "test/ folder":
        return None
    where = f"version {version} was trained on this data set ({describe_data_config(data)['source']})"
    if str(data.get("evaluate_split", "test")) == "all":
        return (f"{where}: data.evaluate_split=all would score it on the images it trained on. "
                f"Fix: data.evaluate_split=test")
    if ours == its:
        return None
    if ours[0] == "carved" and its[0] == "carved":
        seed, fraction = int(trained.seed), float(trained.get("test_fraction", 0.2))
        return (f"{where} with seed={seed} and data.test_fraction={fraction:g}, which carve its held-out test "
                f"split; this promotion carves it with seed={int(data.seed)} and data.test_fraction="
                f"{ours[2]:g}, so it would be scored partly on images it trained on. Fix: seed={seed} "
                f"data.test_fraction={fraction:g}")
    return (f"{where} with another test split ({its[0]}; this promotion uses {ours[0]}), so it would be scored "
            f"partly on images it trained on. Fix: data.official_split as in its training config")


def check_held_out(models: dict[str, TrainedModel], data: DictConfig) -> None:
    """Raise ValueError, before any scoring, when the test split of `data` is not held out for every model
    (`held_out_problem`); when the two models held out different images, no split of this data set is
    unseen by both and the message says so."""
    problems = {version: held_out_problem(version, trained.train_config, data) for version, trained in models.items()}
    found = [problem for problem in problems.values() if problem]
    if not found:
        return
    if len(found) == 2:
        found.append("The two versions held out different test splits of this data set: no split of it is unseen "
                     "by both; compare them on another data set (data=...)")
    raise ValueError("cannot score on this test split: " + "; ".join(found))


class TestSplit:
    """The test split of `data` scored by trained models: one data module per input size the models need
    (image size, channels), each decoded once; `labels` and `files` from the first, and every later data
    module must list the same files in the same order."""

    def __init__(self, data: DictConfig, output_dir: Path, batch_size: int) -> None:
        self.data, self.output_dir, self.batch_size = data, output_dir, batch_size
        self.labels: np.ndarray | None = None
        self.files: list[str] | None = None
        self.described: dict[str, Any] = {}
        self._modules: dict[tuple[int, int], Any] = {}

    def probabilities(self, trained: TrainedModel) -> np.ndarray:
        """P(pneumonia) (n,) float64 of every test image, in the split's order, as evaluate.py scores them."""
        datamodule = self._datamodule(trained)
        return np.concatenate([trained.probabilities(images) for images, _ in datamodule.test_dataloader()])

    def _datamodule(self, trained: TrainedModel) -> Any:
        key = (trained.image_size, trained.channels)
        if key not in self._modules:
            datamodule = instantiate(checkpoint_data_config(self.data, trained.train_config, self.output_dir,
                                                            self.batch_size))
            datamodule.prepare_data()
            datamodule.setup("test")
            files, labels = list(datamodule.files["test"]), datamodule.labels["test"].astype(int)
            if self.files is None:
                self.files, self.labels = files, labels
                described = datamodule.describe()
                self.described = {"name": described["name"], "root": str(datamodule.root),
                                  "split": str(getattr(datamodule, "evaluate_split", "test")),
                                  "n_images": len(files), "n_positive": int(labels.sum())}
            elif files != self.files:
                raise ValueError(f"the test split of {self.described['name']} lists other images at "
                                 f"{key[0]} px / {key[1]} channel(s) than at the first model's size: the two "
                                 f"models cannot be compared image by image")
            self._modules[key] = datamodule
        return self._modules[key]


def run_promotion(cfg: DictConfig) -> dict[str, Any]:
    """Compare registered version cfg.version of cfg.name with the version cfg.alias names, move the alias
    as the rule says (or as cfg.force says), tag the version, write promotion.json; returns its payload
    (decision: first_champion | promoted | rejected | forced | unchanged).

    Raises:
        pneumo.tracking.registry.ModelUriError: the store, the name or the version does not exist.
        ConnectionError: the tracking server does not answer.
        ValueError: a one-class test split, a bad rule or margin, a test split a model trained on
            (`check_held_out`).
        pneumo.deploy.registry.AliasMovedError: another promotion moved the alias meanwhile.
    """
    uri, name, alias = str(cfg.tracking_uri), str(cfg.name), str(cfg.alias)
    rule, margin, force = str(cfg.rule), float(cfg.margin), bool(cfg.force)
    decide({"difference": 0.0, "interval_low": 0.0}, rule, margin)  # a bad rule or margin fails before any work
    challenger_version = str(registry.get_version(uri, name, cfg.version).version)
    champion = registry.current_alias(uri, name, alias)
    output_dir = Path(cfg.output_dir)
    payload: dict[str, Any] = {"name": name, "alias": alias, "challenger": challenger_version,
                               "champion": str(champion.version) if champion else None, "rule": rule,
                               "margin": margin, "force": force, "tracking_uri": uri}
    if champion is not None and str(champion.version) == challenger_version:
        payload["decision"] = "unchanged"
        print(f"{name} version {challenger_version} is already {name}@{alias}: nothing to do.")
        return _write(output_dir, payload)

    split = TestSplit(cfg.data, output_dir, int(cfg.batch_size))
    with tempfile.TemporaryDirectory(prefix="pneumo-promote-") as downloads:  # the weights, read once, then gone
        models = {version: load_trained(_checkpoint(uri, name, version, downloads)) for version in
                  (challenger_version, *([] if champion is None else [str(champion.version)]))}
    check_held_out(models, cfg.data)
    challenger_probs = split.probabilities(models[challenger_version])
    champion_probs = None if champion is None else split.probabilities(models[str(champion.version)])
    if champion_probs is None:
        auroc = rowwise_auroc_auprc(split.labels[None], challenger_probs[None])[0][0]
        comparison, decision = {"auroc_challenger": float(auroc)}, "first_champion"
    else:
        comparison = paired_auroc_difference(split.labels, challenger_probs, champion_probs,
                                             int(cfg.bootstrap.resamples), int(cfg.bootstrap.seed))
        decision = "promoted" if decide(comparison, rule, margin) else "rejected"
        if force:
            payload["rule_said"], decision = decision, "forced"
    payload.update(comparison=comparison, decision=decision, data=split.described,
                   at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if decision != "rejected":
        registry.move_alias(uri, name, challenger_version, alias, payload["champion"])
        if champion is not None:
            registry.tag_version(uri, name, champion.version, {"promotion.replaced_by": challenger_version})
    registry.tag_version(uri, name, challenger_version, promotion_tags(payload))
    print(summary(payload))
    return _write(output_dir, payload)


def _checkpoint(uri: str, name: str, version: str, folder: str) -> Path:
    """Version `version`'s weights-only checkpoint, downloaded into `folder`/VERSION/."""
    return resolve_model_checkpoint(f"models:/{name}/{version}", uri, Path(folder) / version)


def promotion_tags(payload: dict[str, Any]) -> dict[str, str]:
    """The tags a decision leaves on the challenger's version (keys pneumo.promotion*)."""
    comparison, data = payload["comparison"], payload["data"]
    tags = {"promotion": payload["decision"], "promotion.at": payload["at"],
            "promotion.champion_before": str(payload["champion"]),
            "promotion.rule": f"{payload['rule']} margin={payload['margin']:g}",
            "promotion.data": f"{data['name']} {data['split']} split, {data['n_images']} images "
                              f"({data['n_positive']} pneumonia), {data['root']}"}
    tags.update({f"promotion.{key}": f"{value:.6f}" for key, value in comparison.items()
                 if key.startswith(("auroc", "difference"))})
    if "interval_low" in comparison:
        tags["promotion.interval"] = (f"[{comparison['interval_low']:.6f}, {comparison['interval_high']:.6f}] "
                                      f"({comparison['confidence']:.0%}, {comparison['n_resamples']} paired resamples)")
    if "rule_said" in payload:
        tags["promotion.rule_said"] = payload["rule_said"]
    return tags


def summary(payload: dict[str, Any]) -> str:
    """The printed account: the data, both AUROCs, the paired difference with its interval, the decision."""
    name, alias, comparison, data = payload["name"], payload["alias"], payload["comparison"], payload["data"]
    lines = [f"Test split of {data['name']} ({data['root']}): {data['n_images']} images, "
             f"{data['n_positive']} pneumonia",
             f"  AUROC challenger {name}/{payload['challenger']}: {comparison['auroc_challenger']:.4f}"]
    if "auroc_champion" in comparison:
        lines += [f"  AUROC champion   {name}/{payload['champion']}: {comparison['auroc_champion']:.4f}",
                  f"  difference (challenger - champion): {comparison['difference']:+.4f}, "
                  f"{comparison['confidence']:.0%} paired bootstrap interval [{comparison['interval_low']:+.4f}, "
                  f"{comparison['interval_high']:+.4f}] ({comparison['n_resamples']} resamples)"]
    bound = f"-{payload['margin']:g}" if payload["margin"] else "0"
    rule = f"difference >= {bound}" if payload["rule"] == "point" else f"interval's lower end >= {bound}"
    moved = f"{name}@{alias} -> version {payload['challenger']}"
    lines.append({"first_champion": f"Decision: first champion (there was none): {moved}",
                  "promoted": f"Decision: promoted ({rule}): {moved}",
                  "rejected": f"Decision: rejected ({rule} does not hold): {name}@{alias} stays version "
                              f"{payload['champion']}; force=true would move it",
                  "forced": f"Decision: forced (force=true; the rule, {rule}, said {payload.get('rule_said')}): "
                            f"{moved}"}[payload["decision"]])
    return "\n".join(lines)


def _write(output_dir: Path, payload: dict[str, Any]) -> dict[str, Any]:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "promotion.json").write_text(json.dumps(payload, indent=2))
    log.info("promotion record: %s", output_dir / "promotion.json")
    return payload
