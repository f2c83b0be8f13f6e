"""The NIH ChestX-ray14 scale: ``python -m pneumo.bench --table N``.

A synthetic set in NIH's layout (``Data_Entry_2017.csv``, official split lists,
``images/<patient>_<follow-up>.png``, grayscale PNGs of ``--table-side`` pixels, 256 by default where
NIH's are 1024; see ``pneumo.bench.table_data``) is written once and read through
``pneumo.data.table_datamodule.TableDataModule`` with NIH's preset and the memory-mapped disk cache. The
run reports the preparation (table read + cache build, ``prepare_s``), the process's own memory with the
mapped cache aside (``peak_rss_anon_mb``, sampled) next to ``peak_rss_mb``, the decode workers' private
memory, and the warm rate of ``--table-batches`` batches per epoch against the same interleaved compute
ceiling as the folder bench (``pneumo.bench.folder``).
"""
from __future__ import annotations

import argparse
import gc
import resource
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumo.bench.machine import (current_rss_mb, decode_pool_workers, describe_device, load_average, log,
                                  peak_rss_mb, resolve_device, resolve_precision)
from pneumo.bench.measure import Ceiling, decode_rate, fixed_sample, read_into_page_cache
from pneumo.bench.memory import MemorySampler
from pneumo.bench.models import ModelSpec
from pneumo.bench.pipeline import fit_epochs, prepare
from pneumo.bench.table_data import (default_table_root, ensure_bench_table, NIH_CSV, NIH_LABEL, NIH_OFFICIAL_SPLIT,
                                     NIH_SIDE, table_write_workers)
from pneumo.data.datasets import list_images
from pneumo.data.readers import read_image

TABLE_RESULT_KEYS = (
    "ceiling_img_s", "warm_img_s", "warm_over_ceiling", "first_epoch_img_s", "prepare_s", "table_read_s",
    "cache_build_s", "prepare_img_s", "prepare_workers", "decode_img_s", "peak_rss_mb", "peak_rss_anon_mb",
    "prepare_peak_rss_anon_mb", "peak_rss_children_mb", "decode_workers_peak_private_mb", "cache_mb",
    "n_rows", "n_images", "n_train", "n_val", "table_side", "nih_side", "image_size", "batch_size",
    "batches_per_epoch", "precision", "device", "torch",
)


def run_table_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The same measurement through `TableDataModule` on an NIH-layout set of `--table` images, with
    the disk cache (memory-mapped, as on a laptop) and `--table-batches` batches per epoch."""
    from pneumo.data.table_datamodule import TableDataModule  # only the table bench needs it

    rss_at_start = current_rss_mb()
    load_at_start = load_average()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)
    root = Path(args.table_root).expanduser() if args.table_root else default_table_root(args.table, args.table_side)

    with MemorySampler() as memory:
        memory.enter("write")
        log(f"NIH-layout table set of {args.table} images ({args.table_side}x{args.table_side} PNGs) at {root} "
            f"(written once; may take many minutes)")
        write_s = ensure_bench_table(root, args.table, args.table_side, seed=args.seed)
        log("table set ready" + (f", written in {write_s:.1f} s" if write_s is not None else " (already there)"))

        memory.enter("start")
        sample = fixed_sample(list_images(root / "images"), args.decode_sample)
        read_into_page_cache(sample)  # decoding from the page cache, not the disk
        decode_img_s = decode_rate(partial(read_image, size=args.image_size, channels=1), sample)
        ceiling = Ceiling(args.image_size, args.batch_size, device, precision, args.channels_last,
                          model=ModelSpec.read(args.model))
        log(f"ceiling burst (before the pipeline) on {device}, {precision}: "
            f"{ceiling.measure(args.ceiling_seconds):.1f} img/s")

        # The cache goes next to the data (a laptop's /tmp may be RAM), fresh, removed afterwards.
        cache_tmp = tempfile.mkdtemp(prefix="cache-", dir=root)
        try:
            datamodule = TableDataModule(
                csv=str(root / NIH_CSV), image_dir=str(root / "images"), id_column="Image Index",
                file_template="{Image Index}", label=NIH_LABEL, patient_column="Patient ID",
                official_split=NIH_OFFICIAL_SPLIT, name="bench_nih_table", image_size=args.image_size,
                channels=1, batch_size=args.batch_size, num_workers=args.workers, cache="disk",
                cache_dir=cache_tmp, seed=args.seed)
            memory.enter("prepare")
            start = time.perf_counter()
            records = datamodule.table()  # the CSV read and every listed file found
            table_read_s = time.perf_counter() - start
            log(f"table read in {table_read_s:.2f} s: {len(records)} usable images of {records.report['rows']} rows")
            prepared = prepare(datamodule)
            memory.enter("fit")
            timer, loader_workers = fit_epochs(datamodule, args, device, precision, ceiling, cache_tmp,
                                               limit_train_batches=args.table_batches)
            n_rows, n_images = records.report["rows"], len(records)
            del datamodule, records
            gc.collect()
        finally:
            shutil.rmtree(cache_tmp, ignore_errors=True)

    ceiling_img_s, ceiling_spread = ceiling.summary()
    warm_img_s = sum(timer.images[1:]) / sum(timer.durations[1:])
    prepare_s = table_read_s + prepared.seconds
    return {
        "ceiling_img_s": round(ceiling_img_s, 3),
        "warm_img_s": round(warm_img_s, 3),
        "warm_over_ceiling": round(warm_img_s / ceiling_img_s, 4),
        # Epoch 1 includes the trainer's start-up: a burst of a few hundred batches makes that visible.
        "first_epoch_img_s": round(timer.images[0] / timer.durations[0], 3),
        "prepare_s": round(prepare_s, 3),  # reading the table + building the decode-once cache
        "table_read_s": round(table_read_s, 3),
        "cache_build_s": round(prepared.seconds, 3),
        "prepare_img_s": round(n_images / prepare_s, 3),
        "prepare_workers": decode_pool_workers(n_images),
        "decode_img_s": round(decode_img_s, 3),  # read_image, one process, files in the page cache
        "write_s": None if write_s is None else round(write_s, 1),  # None: the set was already there
        "write_workers": table_write_workers(),
        "epoch_s": [round(s, 3) for s in timer.durations],
        "epoch_images": timer.images,
        "ceiling_samples_img_s": [round(r, 3) for r in ceiling.samples],
        "ceiling_spread": round(ceiling_spread, 3),
        # ru_maxrss: counts the pages of the memory-mapped cache this process wrote and read.
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_SELF), 1),
        "rss_at_start_mb": None if rss_at_start is None else round(rss_at_start, 1),  # after the imports
        # The process's own memory, mapped cache aside: the whole run, and the preparation alone.
        "peak_rss_anon_mb": memory.peak(memory.anon_mb),
        "prepare_peak_rss_anon_mb": memory.peak(memory.anon_mb, "prepare"),
        # Largest child by ru_maxrss (the writer's pool too when this run wrote the set), shared pages
        # included; and the decode workers' private memory alone, sampled during the preparation.
        "peak_rss_children_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "decode_workers_peak_private_mb": memory.peak(memory.children_private_mb, "prepare"),
        "write_workers_peak_private_mb": memory.peak(memory.children_private_mb, "write"),
        "cache_mb": round(prepared.cache_bytes / 2 ** 20, 3),
        "n_rows": n_rows,
        "n_images": n_images,  # usable images (Pneumonia or No Finding): all decoded into the cache
        "n_train": prepared.n_train,
        "n_val": prepared.n_val,
        "table_side": args.table_side,
        "nih_side": NIH_SIDE,
        "side_note": (f"synthetic PNGs are {args.table_side}x{args.table_side}; NIH's are {NIH_SIDE}x{NIH_SIDE}, "
                      f"about {(NIH_SIDE / args.table_side) ** 2:.0f}x the pixels to decode per image"),
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "batches_per_epoch": args.table_batches,
        "epochs": args.epochs,
        "precision": precision,
        "channels_last": args.channels_last,
        "cache": "disk",
        "loader_workers": loader_workers,
        "device": describe_device(device),
        "load_avg_1m": [load_at_start, load_average()],
        "torch": torch.__version__,
        "lightning": L.__version__,
        "data_root": str(root),
    }
