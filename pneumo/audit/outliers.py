"""Images worth a look: nearly uniform pictures, extreme brightness, extreme aspect ratio.

Brightness uses the robust z-score of Iglewicz and Hoaglin ("How to Detect and Handle Outliers", ASQC
1993): z = 0.6745 (x - median) / MAD over the audited images' mean grey levels, so a few outliers do not
hide themselves by inflating the spread as they would with mean and standard deviation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo.audit.facts import FileFacts
from pneumo.audit.fingerprints import ImageTable


@dataclass(frozen=True)
class Outlier:
    """One image and why it stands out.

    Attributes:
        index: its row in the ImageTable.
        split, path: where it is.
        reasons: e.g. ["nearly uniform (grey-level std 0.8)", "dark (mean 12, robust z -5.1)",
            "aspect ratio 3.00 (900x300)"].
        score: how far out it is (for ordering: larger first).
    """

    index: int
    split: str
    path: str
    reasons: tuple[str, ...]
    score: float


def robust_z(values: np.ndarray) -> np.ndarray:
    """Iglewicz-Hoaglin modified z-scores, float64 (N,); all 0 when the MAD is 0 (no spread to judge by)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return values
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    return np.zeros_like(values) if mad == 0 else 0.6745 * (values - median) / mad


def find_outliers(table: ImageTable, facts: list[FileFacts], uniform_std: float = 4.0, brightness_z: float = 3.5,
                  aspect: tuple[float, float] = (0.5, 2.0)) -> list[Outlier]:
    """Images that are nearly uniform, far brighter or darker than the rest, or oddly shaped.

    Args:
        table: the decoded images' statistics (grey-level mean and std, 0-255).
        facts: header facts in the table's order (aspect ratio as displayed).
        uniform_std: below this grey-level standard deviation an image is "nearly uniform".
        brightness_z: |robust z| of the mean grey level above which it is "dark" or "bright".
        aspect: (low, high) width/height range outside which the aspect ratio is extreme.

    Returns:
        Outliers, the furthest out first.

    Raises:
        ValueError: facts and table differ in length.
    """
    if len(facts) != len(table):
        raise ValueError(f"{len(facts)} file facts for {len(table)} images")
    z = robust_z(table.mean)
    found = []
    for index, fact in enumerate(facts):
        reasons, score = [], 0.0
        if table.std[index] < uniform_std:
            reasons.append(f"nearly uniform (grey-level std {table.std[index]:.1f})")
            score = max(score, 10.0)
        if abs(z[index]) > brightness_z:
            reasons.append(f"{'bright' if z[index] > 0 else 'dark'} (mean grey {table.mean[index]:.0f}, "
                           f"robust z {z[index]:+.1f})")
            score = max(score, abs(z[index]))
        if fact.height and not aspect[0] <= fact.aspect <= aspect[1]:
            reasons.append(f"aspect ratio {fact.aspect:.2f} ({fact.width}x{fact.height})")
            score = max(score, 5.0 * max(fact.aspect, 1.0 / fact.aspect))
        if reasons:
            found.append(Outlier(index, table.splits[index], table.paths[index], tuple(reasons), float(score)))
    return sorted(found, key=lambda outlier: (-outlier.score, outlier.index))
