"""The audit's figures: image facts per split, duplicate pairs side by side, random samples per class,
outliers, and the nearest-neighbour distance histogram. Each function writes one PNG and returns its path.

Images are the decoded ones (uint8 (n, C, H, W) at the audited size, square as the model sees them);
titles give the split, the file name and, where it matters, the native size.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pneumo.evaluation.plots import plt, save_figure, to_nhwc  # Agg backend, the project's PNG settings

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def short(name: str, width: int = 30) -> str:
    """A file name cut in the middle to `width` characters ("person1946_ba…_4874.jpeg")."""
    name = Path(name).name
    if len(name) <= width:
        return name
    keep = width - 1
    return f"{name[:keep - keep // 2]}…{name[-(keep // 2):]}"


def _show(ax: Any, image: np.ndarray, title: str, colour: str = "black") -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_title(title, fontsize=8, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_image_facts(facts_by_split: dict[str, list[Any]], means_by_split: dict[str, np.ndarray],
                     path: str | Path) -> Path:
    """Four panels per split: native width x height (scatter), mode and bit-depth counts (bars), and the
    mean grey level of the decoded images (histogram).

    Args:
        facts_by_split: FileFacts per split (readable ones are plotted).
        means_by_split: float (n,) mean grey level (0-255) of each decoded image per split.
    """
    splits = list(facts_by_split)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    size_ax, mode_ax, bits_ax, grey_ax = axes.ravel()
    for split in splits:
        readable = [fact for fact in facts_by_split[split] if fact.error is None]
        size_ax.scatter([f.width for f in readable], [f.height for f in readable], s=12, alpha=0.6,
                        color=SPLIT_COLOURS.get(split), label=f"{split} ({len(readable)})")
    size_ax.set(xlabel="width (px)", ylabel="height (px)", title="Native image size")
    size_ax.legend(fontsize=8)
    for ax, key, title in ((mode_ax, "mode", "Mode (Pillow mode or DICOM photometric)"),
                           (bits_ax, "bits", "Bit depth (bits per sample)")):
        values = sorted({str(getattr(f, key)) for split in splits for f in facts_by_split[split] if f.error is None},
                        key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))  # 8 before 12
        x = np.arange(len(values))
        width = 0.8 / max(1, len(splits))
        for n, split in enumerate(splits):
            counts = [sum(1 for f in facts_by_split[split] if f.error is None and str(getattr(f, key)) == v)
                      for v in values]
            bars = ax.bar(x + (n - (len(splits) - 1) / 2) * width, counts, width, label=split,
                          color=SPLIT_COLOURS.get(split))
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(x, values)
        ax.set(ylabel="images", title=title)
        ax.legend(fontsize=8)
    bins = np.linspace(0, 255, 33)
    for split in splits:
        grey_ax.hist(means_by_split[split], bins=bins, histtype="step", lw=2, color=SPLIT_COLOURS.get(split),
                     label=split, density=True)
    grey_ax.set(xlabel="mean grey level of the decoded image (0-255)", ylabel="density",
                title="Brightness")
    grey_ax.legend(fontsize=8)
    fig.suptitle("Image facts per split (read from file headers; brightness from the decoded images)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pairs(images: np.ndarray, titles: Sequence[tuple[str, str]], captions: Sequence[str],
               colours: Sequence[str], path: str | Path, heading: str) -> Path:
    """Pairs side by side, one pair a row.

    Args:
        images: uint8 (2 * n, C, H, W): first and second image of each pair, in turn.
        titles: (first title, second title) per pair.
        captions: one line per pair, written above it (kind, distance).
        colours: caption colour per pair (red for cross-split leaks).
        heading: the figure's title.
    """
    tiles = to_nhwc(images)
    n = len(titles)
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.4 * n), squeeze=False)
    for row in range(n):
        for side in range(2):
            _show(axes[row, side], tiles[2 * row + side], titles[row][side])
        axes[row, 0].annotate(captions[row], xy=(1.05, 1.22), xycoords="axes fraction", ha="center",
                              fontsize=9, color=colours[row], fontweight="bold")
    fig.suptitle(heading, y=1.0)
    fig.tight_layout(h_pad=3.0)
    return save_figure(fig, path)


def plot_grid(images: np.ndarray, titles: Sequence[str], path: str | Path, heading: str,
              colours: Sequence[str] | None = None, columns: int = 4) -> Path:
    """Images in a grid with a title each (samples of a class, outliers).

    Args:
        images: uint8 (n, C, H, W), n >= 1.
        titles: one per image (may hold line breaks).
        colours: title colour per image (default black).
    """
    tiles = to_nhwc(images)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for n, (ax, tile, title) in enumerate(zip(axes.ravel(), tiles, titles)):
        ax.axis("on")
        _show(ax, tile, title, colours[n] if colours else "black")
    fig.suptitle(heading)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_nearest(nearest: np.ndarray, max_distance: int, hash_bits: int, path: str | Path) -> Path:
    """Histogram of each image's perceptual-hash distance to its nearest other image, with the threshold.

    Copies sit left of the threshold line; a data set whose distinct images crowd the line needs a
    lower audit.near_max_distance.

    Args:
        nearest: uint16 (N,) distances in bits (65535 = no other image; left out).
    """
    values = np.asarray(nearest)[np.asarray(nearest) <= hash_bits]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(values, bins=np.arange(0, max(int(values.max(initial=0)), max_distance) + 3, 2), color="tab:blue")
    ax.axvline(max_distance + 0.5, color="tab:red", ls="--",
               label=f"near-duplicate threshold: distance <= {max_distance}")
    copies = int((values <= max_distance).sum())
    ax.set(xlabel=f"pHash distance to the nearest other image (bits of {hash_bits})", ylabel="images",
           title=f"Nearest neighbour per image: {copies} of {len(values)} within the threshold")
    ax.legend()
    return save_figure(fig, path)
