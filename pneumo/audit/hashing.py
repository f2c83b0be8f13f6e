"""Image hashes for duplicate search: an exact hash of decoded pixels and a perceptual hash (DCT pHash).

Perceptual hash: `imagehash.phash` (ImageHash 4.3.2), the DCT hash of C. Zauner, "Implementation and
Benchmarking of Perceptual Image Hash Functions" (2010), in N. Krawetz's formulation ("Looks Like It",
hackerfactor.com, 2011): grayscale, resize to 4*hash_size pixels square (Lanczos), 2-D DCT-II, keep
the top-left hash_size x hash_size block of low frequencies, bit = coefficient > the block's median.
Re-encoding, resizing and a uniform brightness shift move few bits; another picture moves about half.

Calibration (synthetic demo set, `pneumo.demo.synthetic`, images decoded through the cache at 128 px,
hash_size 16 = 256 bits): 12 images, each copied resized to 0.7x and 0.5x, re-encoded as JPEG at quality
60, brightened by +10 and +20 grey levels, gave distances 0-10 to their originals (0-6 at 224 px);
the 214,840 pairs of distinct images of a 656-image set were 38 bits apart at least (median 118). With
64-bit hashes (hash_size 8) the two ranges overlapped (copies up to 4, distinct pairs down to 4), so
256 bits it is. NEAR_MAX_DISTANCE = 24 sits between the ranges. Real radiographs resemble each other
more than the demo's; the audit's nearest-neighbour histogram shows where a data set's gap lies.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

HASH_SIZE = 16                  # pHash side: HASH_SIZE**2 = 256 bits
NEAR_MAX_DISTANCE = 24          # Hamming distance (bits of 256) up to which two images count as copies
# Pairs (rows x columns) in one block of the distance search: ~45 MB of temporaries at a time.
_BLOCK_ELEMENTS = 4_000_000


def exact_hash(image: np.ndarray) -> str:
    """Hex digest (BLAKE2b, 128 bits) of a decoded image's shape, dtype and pixel bytes.

    Args:
        image: any array, e.g. uint8 (C, H, W) as the data module decodes it.

    Returns:
        32 hex characters; equal for arrays with identical shape, dtype and values.
    """
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def perceptual_hash(image: np.ndarray, hash_size: int = HASH_SIZE) -> np.ndarray:
    """The DCT perceptual hash (pHash, see the module docstring) of one decoded image.

    Args:
        image: uint8 (H, W), (1, H, W) or (3, H, W) (RGB, reduced to luminance by Pillow).
        hash_size: side of the low-frequency DCT block; the hash has hash_size**2 bits.

    Returns:
        bool (hash_size**2,).

    Raises:
        ValueError: the array is not one grayscale or RGB image, or hash_size < 2.
    """
    import imagehash  # imported here: pywt and scipy load only where hashes are made
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[-1] == 3):
        raise ValueError(f"perceptual_hash takes one (H, W), (1, H, W) or (3, H, W) image, got shape {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    return imagehash.phash(picture, hash_size=hash_size).hash.ravel()


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bool hashes (N, B) as uint64 words (N, ceil(B / 64)) for fast Hamming distances (zero-padded)."""
    bits = np.asarray(bits, dtype=bool).reshape(len(bits), -1)
    words = -(-bits.shape[1] // 64)
    padded = np.zeros((len(bits), words * 64), dtype=bool)
    padded[:, :bits.shape[1]] = bits
    return np.packbits(padded, axis=1).view(np.uint64).reshape(len(bits), words)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes: a (N, W) x b (M, W) uint64 -> uint16 (N, M), in bits."""
    distances = np.zeros((len(a), len(b)), dtype=np.uint16)
    for word in range(a.shape[1]):  # one word at a time: no (N, M, W) intermediate
        distances += np.bitwise_count(a[:, word, None] ^ b[None, :, word])
    return distances


class Matches(NamedTuple):
    """What `near_pairs` finds: pairs (i into a, j into b, distance in bits), sorted by distance then i
    then j; and each hash's distance to its nearest one on the other side (65535 when there is none)."""

    i: np.ndarray          # int64 (P,)
    j: np.ndarray          # int64 (P,)
    distance: np.ndarray   # uint16 (P,)
    nearest_a: np.ndarray  # uint16 (N,)
    nearest_b: np.ndarray  # uint16 (M,); the same array as nearest_a when b is None


def near_pairs(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = NEAR_MAX_DISTANCE) -> Matches:
    """Every pair of packed hashes at most `max_distance` bits apart, and each hash's nearest distance.

    Brute force in blocks (XOR and popcount of every pair, ~45 MB of temporaries at a time; about 20 ns
    a pair on one core): exact for any threshold, which a pigeonhole index is not at 24 of 256 bits.

    Args:
        a: uint64 (N, W) from `pack_bits`.
        b: uint64 (M, W), or None to compare `a` with itself (each unordered pair i < j once; a hash is
            not its own neighbour).
        max_distance: largest Hamming distance reported, in bits.

    Returns:
        Matches (rows of b are rows of a when b is None).
    """
    within = b is None
    b = a if within else b
    none = np.iinfo(np.uint16).max
    nearest_a = np.full(len(a), none, dtype=np.uint16)
    nearest_b = nearest_a if within else np.full(len(b), none, dtype=np.uint16)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start, stop in _blocks(len(a), len(b)):
        first = start if within else 0  # within: columns from the block's first row on (upper triangle)
        distances = hamming(a[start:stop], b[first:])
        if within:  # on and below the diagonal: the row itself, and pairs earlier blocks saw
            square = distances[:, :stop - start]
            square[np.tril(np.ones(square.shape, dtype=bool))] = none
        if distances.size:
            np.minimum(nearest_b[first:], distances.min(axis=0), out=nearest_b[first:])
            np.minimum(nearest_a[start:stop], distances.min(axis=1), out=nearest_a[start:stop])
        rows, cols = np.nonzero(distances <= max_distance)
        found.append((rows + start, cols + first, distances[rows, cols]))
    i, j, d = ((np.concatenate(parts) for parts in zip(*found)) if found
               else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint16)))
    order = np.lexsort((j, i, d))
    return Matches(i[order].astype(np.int64), j[order].astype(np.int64), d[order].astype(np.uint16),
                   nearest_a, nearest_b)


def _blocks(n: int, m: int) -> Iterator[tuple[int, int]]:
    step = max(1, _BLOCK_ELEMENTS // max(1, m))
    for start in range(0, n, step):
        yield start, min(n, start + step)
