import math

import pytest
import torch

from pneumo.transforms import BatchAugment


def _batch(n: int = 8, size: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    # An asymmetric pattern, so flips and rotations change pixels.
    x = torch.zeros(n, 3, size, size)
    x[:, :, 5:20, 8:40] = 0.9
    x[:, :, 30:60, 45:55] = 0.4
    return x + 0.05 * torch.rand_like(x)


def test_strength_zero_is_the_identity():
    x = _batch()
    assert torch.equal(BatchAugment(strength=0)(x), x)


def test_each_sample_of_a_batch_gets_its_own_draw():
    x = _batch(1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    torch.manual_seed(1)
    y = BatchAugment(strength=1)(x)
    differences = [(y[i] - y[j]).abs().mean().item() for i in range(6) for j in range(i + 1, 6)]
    assert min(differences) > 1e-3


def test_output_stays_a_valid_image():
    torch.manual_seed(2)
    y = BatchAugment(strength=1.5)(_batch())
    assert y.shape == (8, 3, 64, 64) and y.min() >= 0 and y.max() <= 1


def test_ranges_scale_with_strength():
    half, full = BatchAugment(strength=0.5), BatchAugment(strength=1.0)
    assert full.max_angle == pytest.approx(math.radians(54))
    assert half.max_angle == pytest.approx(math.radians(27))
    assert (full.zoom, half.zoom) == pytest.approx((0.2, 0.1))
    assert (full.contrast, half.contrast) == pytest.approx((0.3, 0.15))
    assert (full.flip_p, half.flip_p) == pytest.approx((0.5, 0.25))


def test_contrast_factor_stays_in_the_seed_range():
    # A flat-mean image: contrast scales deviations from the mean by a factor in [0.7, 1.3].
    augment = BatchAugment(strength=1, rotation_deg=0, zoom=0, flip_p=0)
    x = torch.full((200, 1, 8, 8), 0.5)
    x[:, :, :, :4] = 0.4
    x[:, :, :, 4:] = 0.6
    torch.manual_seed(3)
    factors = (augment(x)[:, 0, 0, 4] - 0.5) / 0.1
    assert factors.min() >= 0.7 - 1e-4 and factors.max() <= 1.3 + 1e-4
    assert factors.max() - factors.min() > 0.4  # the range is actually used


def test_geometry_only_moves_pixels_without_contrast():
    augment = BatchAugment(strength=1, rotation_deg=0, zoom=0, contrast=0, flip_p=1.0)
    x = _batch(2)
    torch.testing.assert_close(augment(x), x.flip(-1), atol=1e-5, rtol=0)


def test_negative_strength_is_refused():
    with pytest.raises(ValueError, match="augment.strength"):
        BatchAugment(strength=-1)
