"""The hashes behind duplicate search, on real JPEG files: planted copies match, distinct images do not."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from pneumo.audit.hashing import (HASH_SIZE, NEAR_MAX_DISTANCE, exact_hash, hamming, near_pairs, pack_bits,
                                  perceptual_hash)
from pneumo.data.readers import read_image


def _variants(path, tmp_path) -> dict[str, str]:
    """Copies of one file as leaks arrive in practice: resized, re-encoded, brightened."""
    out = {}
    with Image.open(path) as image:
        image.load()
        grey = np.asarray(image, dtype=np.int16)
        made = {"resized 0.7x": (image.resize((round(image.width * .7), round(image.height * .7))), 95),
                "resized 0.5x": (image.resize((round(image.width * .5), round(image.height * .5))), 95),
                "JPEG quality 60": (image, 60),
                "brightened +10": (Image.fromarray(np.clip(grey + 10, 0, 255).astype(np.uint8), image.mode), 95)}
    for name, (copy, quality) in made.items():
        target = tmp_path / f"{path.stem}-{name.replace(' ', '_')}.jpeg"
        copy.save(target, format="JPEG", quality=quality)
        out[name] = str(target)
    return out


@pytest.mark.parametrize("size", [128, 224])
def test_copies_match_and_distinct_images_do_not(tiny_root, tmp_path, size):
    files = sorted(tiny_root.rglob("*.jpeg"))
    hashes = {str(f): perceptual_hash(read_image(f, size)) for f in files}
    assert all(bits.shape == (HASH_SIZE * HASH_SIZE,) and bits.dtype == bool for bits in hashes.values())
    copies = {}
    for original in files[::17]:  # 8 originals from every split and both classes
        for name, copy in _variants(original, tmp_path).items():
            bits = perceptual_hash(read_image(copy, size))
            copies[(original.name, name)] = int((bits != hashes[str(original)]).sum())
    distinct = [int((hashes[a] != hashes[b]).sum()) for a, b in itertools.combinations(hashes, 2)]
    print(f"{size} px: copies {min(copies.values())}-{max(copies.values())} bits, "
          f"{len(distinct)} distinct pairs {min(distinct)}-{max(distinct)} bits (median {np.median(distinct):.0f})")
    assert max(copies.values()) <= NEAR_MAX_DISTANCE, copies
    assert min(distinct) > NEAR_MAX_DISTANCE


def test_exact_hash_tells_pixels_apart():
    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64), dtype=np.uint8)
    twin, changed = image.copy(), image.copy()
    changed[0, 10, 10] ^= 1
    assert exact_hash(image) == exact_hash(twin)
    assert exact_hash(image) != exact_hash(changed)
    assert exact_hash(image) != exact_hash(image.reshape(1, 32, 128))  # same bytes, other shape


def test_perceptual_hash_refuses_what_is_not_one_image():
    with pytest.raises(ValueError, match="shape"):
        perceptual_hash(np.zeros((2, 1, 8, 8), dtype=np.uint8))


@pytest.mark.parametrize("block", [700, 10**7])
def test_near_pairs_is_brute_force_in_blocks(block, monkeypatch):
    monkeypatch.setattr("pneumo.audit.hashing._BLOCK_ELEMENTS", block)
    rng = np.random.default_rng(1)
    bits = rng.random((120, 256)) < 0.5
    bits[7] = bits[3]                                  # an exact twin
    bits[50] = bits[40] ^ (rng.random(256) < 0.04)     # a few bits apart
    packed = pack_bits(bits)
    full = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    within = near_pairs(packed, None, 40)
    expected = sorted((int(full[i, j]), i, j) for i, j in itertools.combinations(range(120), 2) if full[i, j] <= 40)
    assert list(zip(within.distance.tolist(), within.i.tolist(), within.j.tolist())) == expected
    assert (0, 3, 7) in expected and any(i == 40 and j == 50 for _, i, j in expected)
    np.fill_diagonal(full, 10**6)
    assert np.array_equal(within.nearest_a, full.min(axis=1))
    across = near_pairs(packed[:80], packed[80:], 40)
    block_of = full[:80, 80:]
    assert sorted(zip(across.i.tolist(), across.j.tolist())) == sorted(zip(*np.nonzero(block_of <= 40)))
    assert np.array_equal(across.nearest_a, block_of.min(axis=1))
    assert np.array_equal(across.nearest_b, block_of.min(axis=0))
    assert np.array_equal(hamming(packed[:5], packed[:5]), (bits[:5, None] != bits[None, :5]).sum(axis=2))
