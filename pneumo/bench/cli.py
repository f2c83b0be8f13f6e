"""The command line of ``python -m pneumo.bench``: the options, their checks, and the one JSON line on stdout.

Without ``--table`` it runs the folder bench (`pneumo.bench.folder`), with it the table bench
(`pneumo.bench.table`), with ``--predict N`` the bulk-prediction bench (`pneumo.bench.predict`). Everything else the run writes, Lightning's chatter and the children's output
included, goes to stderr. Mistakes on the command line (an unknown model, a missing data folder) end the
run with one message and no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator, Sequence

from pneumo.bench.folder import RESULT_KEYS, run_bench, SYNTHETIC_MAX_SIDE, SYNTHETIC_MIN_SIDE
from pneumo.bench.models import ModelSpec
from pneumo.bench.table import run_table_bench, TABLE_RESULT_KEYS

PROG = "python -m pneumo.bench"
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0 or 'auto'")
    return number


def _positive(kind: type, minimum: float = 1) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = kind(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Every option of both benches (the table bench's in their own group)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Throughput of the decode-once cache + on-device augmentation pipeline against the "
                    "model's compute ceiling. Prints one JSON line on stdout; progress goes to stderr.")
    parser.add_argument("--data-root", default=None,
                        help="Kaggle-layout data set (ROOT/train/{NORMAL,PNEUMONIA}); default: a synthetic "
                             "set of 1-3 megapixel JPEGs written once under <project>/.cache/bench-synthetic-<n>")
    parser.add_argument("--n-images", type=_positive(int, 8), default=1000,
                        help="train images in the synthetic set (default 1000; the real train set has 5216)")
    parser.add_argument("--synthetic-min-side", type=_positive(int, 16), default=SYNTHETIC_MIN_SIDE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-max-side", type=_positive(int, 16), default=SYNTHETIC_MAX_SIDE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", default="baseline",
                        help="a config of conf/model (baseline, efficientnet_lite0, resnet18, resnet50, densenet121): "
                             "trained whole (every layer), untrained weights; its input size is the default")
    parser.add_argument("--image-size", type=_positive(int, 8), default=None,
                        help="default: the model config's (128 for the baseline, 224 for the pretrained backbones)")
    parser.add_argument("--batch-size", type=_positive(int), default=32)
    parser.add_argument("--epochs", type=_positive(int, 2), default=3,
                        help="epoch 1 is cold (with the cache build), the rest warm (default 3; at least 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: 32-true on the CPU, bf16-mixed on a GPU (16-mixed without bf16)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workers", type=_workers, default="auto",
                        help="DataLoader workers (default: the DataModule's 'auto', half the cores)")
    parser.add_argument("--cache", choices=("memory", "disk"), default=None,
                        help="memory (default) or disk (a fresh temporary folder, removed afterwards); "
                             "--table always uses disk")
    parser.add_argument("--ceiling-seconds", type=_positive(float, 0.0), default=5.0,
                        help="seconds of each ceiling burst (one before the cache build, one after each epoch)")
    parser.add_argument("--decode-sample", type=_positive(int), default=100,
                        help="files in the fixed decode-rate sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup", type=_positive(int), nargs="?", const=3, default=None, metavar="REPEATS",
                        help="instead: time to the first message of a mistaken command line (train.py, evaluate.py) "
                             "and to the first training step, median of REPEATS runs (default 3)")
    predict = parser.add_argument_group("bulk prediction (pneumo.bench.predict)")
    predict.add_argument("--predict", type=_positive(int, 1), nargs="?", const=10000, default=None, metavar="N",
                         help="instead: bulk prediction over N synthetic 1-3 megapixel JPEGs (default 10000; written "
                              "once, or --data-root's images): img/s of PyTorch and ONNX Runtime against the "
                              "parallel decode rate and each runtime's inference ceiling (--batch-size, --workers, "
                              "--model, --ceiling-seconds apply)")
    table = parser.add_argument_group("NIH-scale table set (pneumo.data.table_datamodule.TableDataModule)")
    table.add_argument("--table", type=_positive(int, 40), default=None, metavar="N",
                       help="bench an NIH ChestX-ray14-layout set of N images (Data_Entry_2017.csv, official "
                            "split lists, images/<patient>_<follow-up>.png), written once, through the table "
                            "DataModule with the memory-mapped disk cache")
    table.add_argument("--table-root", default=None,
                       help="where the table set is (written once); default <project>/.cache/bench-table-<N>-<side>")
    table.add_argument("--table-side", type=_positive(int, 16), default=256,
                       help="side of its grayscale PNGs (default 256; NIH's are 1024, 16x the pixels to write "
                            "and decode: 100,000 of them would take hours and ~50 GB here)")
    table.add_argument("--table-batches", type=_positive(int), default=100,
                       help="training batches per epoch (default 100): a burst, not the whole set, so the "
                            "warm rate is measured in minutes at any N")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked; --cache resolved (memory for the folder bench, disk for --table) and
    --image-size (the model config's when not given)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predict is not None and (args.table is not None or args.startup is not None):
        parser.error("--predict runs a bench of its own: leave out --table and --startup")
    if args.table is not None:
        if args.cache == "memory":
            parser.error("--table measures the memory-mapped disk cache (the laptop case): leave --cache out")
        if args.data_root:
            parser.error("--table writes its own set; --data-root is for the Kaggle folder layout")
    args.cache = args.cache or ("disk" if args.table is not None else "memory")
    args.image_size = args.image_size or ModelSpec.read(args.model).image_size
    return args


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout (Python or C level, this process or its children) goes to stderr."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the command line, runs the bench it names and prints its figures as one JSON line."""
    args = parse_args(argv)
    if args.startup is not None:  # its own figures and its own bound (exit 1 when a message took too long)
        from pneumo.bench.startup import main as startup_main

        return startup_main(["--repeats", str(args.startup)])
    run, keys = (run_table_bench, TABLE_RESULT_KEYS) if args.table is not None else (run_bench, RESULT_KEYS)
    if args.predict is not None:  # imported here: ONNX Runtime only for this bench
        from pneumo.bench.predict import PREDICT_RESULT_KEYS, run_predict_bench

        run, keys = run_predict_bench, PREDICT_RESULT_KEYS
    with stdout_to_stderr():
        try:
            result = run(args)
        except FileNotFoundError as error:  # a data folder or file that is not there: the DataModule's message
            raise SystemExit(f"{PROG}: error: {error}") from None
    bad = [key for key in keys if key not in result]
    if bad:  # a programming error, not a measurement
        raise RuntimeError(f"result lacks {bad}")
    print(json.dumps(result), flush=True)
    return 0
