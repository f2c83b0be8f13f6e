"""Is the data pipeline keeping the model fed?  ``python -m pneumo.bench``

One run, one machine, one JSON line on stdout (progress goes to stderr). It measures, in this order:

1. decode rates over a fixed sample of files, single process: Pillow full decode + resize
   (``decode_plain_img_s``) vs the project's draft-mode ``read_image`` (``decode_draft_img_s``);
2. the compute ceiling (``ceiling_img_s``): forward + backward + Adam step of the same model on float
   tensors already on the device, same batch size, precision and memory format. It is measured in
   this process in short bursts interleaved with the pipeline -- one before the cache build and one
   after every epoch, outside the epochs' timed windows -- and is the mean of the bursts, so the
   ceiling sees the same background load as the pipeline on a shared machine; ``ceiling_spread``
   ((max - min) / mean of the bursts) says how noisy the machine was during the run;
3. the cache build (``prepare_s``): ``ChestXrayDataModule.setup("fit")``, which decodes every JPEG
   of train/ once into the uint8 cache (the patient-grouped val split is carved out of train/);
4. the real training pipeline: ``lightning.Trainer.fit`` of ``PneumoniaClassifier`` (the seed CNN, or
   ``--model`` any config of ``conf/model``, every layer trained, at its input size) with
   ``BatchAugment(1.0)`` on the device, for ``--epochs`` epochs. Epoch 1 is cold: ``cold_img_s`` is
   train images / (cache build + time from ``trainer.fit`` to the end of epoch 1, which includes the
   trainer's start-up and DataLoader worker start). The later epochs are warm: ``warm_img_s`` is
   train images x (epochs - 1) / their summed wall time (each from the end of the previous epoch's
   ceiling burst to its own end, so Lightning's work between epochs counts).

Ratios (``warm_over_ceiling``, ``cold_over_ceiling``) are what to compare across machines; the
absolute rates depend on the machine and on whatever else runs on it. What the warm ratio misses
from 1 is everything the ceiling leaves out: batch fetch, uint8->float, augmentation, Lightning.

Memory: ``peak_rss_mb`` is this process's peak, imports included (``rss_at_start_mb``: a CUDA build
of torch with Lightning holds ~0.8 GB before any work) and the ceiling's own model included;
``peak_rss_children_mb`` is the largest child (decode pool, DataLoader worker), counting the pages
it shares with this process after the fork.

``--table N`` measures the NIH ChestX-ray14 scale instead: see ``pneumo.bench.table``.
"""
from __future__ import annotations

import argparse
import gc
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumo.bench.machine import (current_rss_mb, decode_pool_workers, describe_device, load_average, log,
                                  peak_rss_mb, resolve_device, resolve_precision)
from pneumo.bench.measure import Ceiling, decode_rates, fixed_sample
from pneumo.bench.models import ModelSpec
from pneumo.bench.pipeline import fit_epochs, prepare
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.datasets import list_images
from pneumo.data.image_formats import IMAGE_SUFFIXES
from pneumo.demo.synthetic import ensure_synthetic_dataset
from pneumo.paths import PROJECT_ROOT

# Real Kaggle X-rays are 1-3 megapixels; the benchmark's synthetic stand-in matches that.
SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIDE = 1000, 1800

RESULT_KEYS = (
    "ceiling_img_s", "cold_img_s", "warm_img_s", "warm_over_ceiling", "cold_over_ceiling",
    "decode_plain_img_s", "decode_draft_img_s", "prepare_s", "prepare_workers", "peak_rss_mb",
    "peak_rss_children_mb", "cache_mb", "n_images", "image_size", "batch_size", "precision", "device",
    "torch",
)


def default_data_root(n_images: int, min_side: int = SYNTHETIC_MIN_SIDE,
                      max_side: int = SYNTHETIC_MAX_SIDE) -> Path:
    """Where the synthetic set of these parameters is kept: <project>/.cache/bench-synthetic-<n>[-<min>-<max>]."""
    suffix = "" if (min_side, max_side) == (SYNTHETIC_MIN_SIDE, SYNTHETIC_MAX_SIDE) else f"-{min_side}-{max_side}"
    return PROJECT_ROOT / ".cache" / f"bench-synthetic-{n_images}{suffix}"


def ensure_bench_data(root: Path, n_images: int, min_side: int = SYNTHETIC_MIN_SIDE,
                      max_side: int = SYNTHETIC_MAX_SIDE) -> Path:
    """The synthetic set, written once (a no-op when it is already there with these parameters).

    Only train/ is used (validation is carved out of it by patient), so val/ and test/ stay empty.
    """
    return ensure_synthetic_dataset(root, n_train=n_images, n_val=0, n_test=0,
                                    min_side=min_side, max_side=max_side)


def train_images(root: Path) -> list[str]:
    """The image files under root/train, sorted (the project's `list_images`); SystemExit when there are none."""
    try:
        return list_images(root / "train")
    except FileNotFoundError:
        raise SystemExit(f"no training images under {root / 'train'}: --data-root takes a Kaggle-layout folder, "
                         f"ROOT/train/{{NORMAL,PNEUMONIA}}/ of {'/'.join(IMAGE_SUFFIXES)} files") from None


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The folder bench: every figure of one run, keyed as in RESULT_KEYS (and more)."""
    # What the imports alone hold (~0.8 GB with a CUDA build of torch and Lightning); peak_rss_mb
    # minus this is what the run added: the cache and the training memory of the two models.
    rss_at_start = current_rss_mb()
    load_at_start = load_average()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)

    if args.data_root:
        root = Path(args.data_root).expanduser()
        synthetic = False
    else:
        root = default_data_root(args.n_images, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set of {args.n_images} train images at {root} (written once; may take minutes)")
        start = time.perf_counter()
        ensure_bench_data(root, args.n_images, args.synthetic_min_side, args.synthetic_max_side)
        log(f"synthetic set ready in {time.perf_counter() - start:.1f} s")
        synthetic = True

    train_files = train_images(root)
    sample = fixed_sample(train_files, args.decode_sample)
    log(f"decoding {len(sample)} files, plain then draft")
    decode_plain_img_s, decode_draft_img_s = decode_rates(sample, args.image_size)

    # The ceiling is measured in bursts interleaved with the pipeline, in this process: one before
    # the cache build and one after each epoch (outside the epoch's timed window). On a shared,
    # noisy machine the bursts see the same background load as the epochs around them; the ceiling
    # is their mean, and their spread says how far the ratios can be trusted.
    ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last,
                      model=ModelSpec.read(args.model))
    log(f"ceiling burst (before the pipeline) on {device}, {precision}: "
        f"{ceiling.measure(args.ceiling_seconds):.1f} img/s")

    cache_tmp = tempfile.mkdtemp(prefix="pneumo-bench-") if args.cache == "disk" else None
    try:
        datamodule = ChestXrayDataModule(
            str(root), image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers,
            val_strategy="patient", cache=args.cache, cache_dir=cache_tmp, seed=args.seed)
        prepared = prepare(datamodule)
        timer, loader_workers = fit_epochs(datamodule, args, device, precision, ceiling,
                                           cache_tmp or tempfile.gettempdir())
        del datamodule
        gc.collect()
    finally:
        if cache_tmp:
            shutil.rmtree(cache_tmp, ignore_errors=True)
    prepare_s, n_train = prepared.seconds, prepared.n_train

    ceiling_img_s, ceiling_spread = ceiling.summary()
    # Cold: everything from the JPEG files to the end of epoch 1 (trainer start-up and loader
    # worker start included). Warm: the later epochs, reading the cache.
    first_epoch_s = timer.durations[0]
    cold_img_s = n_train / (prepare_s + first_epoch_s)
    warm_img_s = n_train * (args.epochs - 1) / sum(timer.durations[1:])
    # Diagnostic for noisy machines: each epoch against the mean of the two bursts around it
    # (epoch 1 with the cache build, as in cold_img_s).
    local = [n_train / (duration + (prepare_s if k == 0 else 0.0)) / ((ceiling.samples[k] + ceiling.samples[k + 1]) / 2)
             for k, duration in enumerate(timer.durations)]

    return {
        "ceiling_img_s": round(ceiling_img_s, 3),
        "cold_img_s": round(cold_img_s, 3),
        "warm_img_s": round(warm_img_s, 3),
        "warm_over_ceiling": round(warm_img_s / ceiling_img_s, 4),
        "cold_over_ceiling": round(cold_img_s / ceiling_img_s, 4),
        "decode_plain_img_s": round(decode_plain_img_s, 3),
        "decode_draft_img_s": round(decode_draft_img_s, 3),
        "draft_speedup": round(decode_draft_img_s / decode_plain_img_s, 2),
        "prepare_s": round(prepare_s, 3),
        "prepare_workers": decode_pool_workers(len(train_files)),
        "first_epoch_s": round(first_epoch_s, 3),
        "fit_startup_s": round(timer.first_start - timer.fit_start, 3),
        "epoch_s": [round(s, 3) for s in timer.durations],
        # Bursts: before the cache build, then after each epoch. spread = (max - min) / mean.
        "ceiling_samples_img_s": [round(r, 3) for r in ceiling.samples],
        "ceiling_spread": round(ceiling_spread, 3),
        "epoch_over_local_ceiling": [round(r, 3) for r in local],
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_SELF), 1),
        "rss_at_start_mb": None if rss_at_start is None else round(rss_at_start, 1),  # after the imports
        # Largest single child (decode pool, DataLoader workers; and the synthetic writer's pool when
        # this run wrote the set), counted with the pages it shares with this process.
        "peak_rss_children_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "cache_mb": round(prepared.cache_bytes / 2 ** 20, 3),
        "n_images": len(train_files),
        "n_train": n_train,
        "n_val": prepared.n_val,
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "precision": precision,
        "channels_last": args.channels_last,
        "cache": args.cache,
        "loader_workers": loader_workers,
        "decode_sample": len(sample),
        "device": describe_device(device),
        "load_avg_1m": [load_at_start, load_average()],  # at the start and at the end of the run
        "torch": torch.__version__,
        "lightning": L.__version__,
        "data_root": str(root),
        "synthetic": synthetic,
    }
