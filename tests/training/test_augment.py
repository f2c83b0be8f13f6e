import math

import pytest
import torch

from pneumo.training.augment import BatchAugment


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


def test_mixup_alpha_zero_is_the_identity():
    x, y = _batch(), torch.tensor([0.0, 1, 0, 1, 1, 0, 1, 1])
    mixed, targets = BatchAugment(strength=0, mixup_alpha=0).mix(x, y)
    assert mixed is x and targets is y


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(8)])  # image i is the constant i
    y = torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1])
    torch.manual_seed(4)
    mixed, targets = BatchAugment(strength=0, mixup_alpha=0.4).mix(x, y)
    values = mixed[:, 0, 0, 0]
    assert torch.allclose(mixed, values.view(-1, 1, 1, 1).expand_as(mixed))  # a blend, not a patch
    assert ((targets > 0) & (targets < 1)).any()
    # Recover each image's own weight from its pixel value and check the label used the same one.
    for i in range(8):
        partners = [j for j in range(8) if j != i]
        fits = []
        for j in partners:
            lam = (float(values[i]) - j) / (i - j)
            if -1e-5 <= lam <= 1 + 1e-5:
                fits.append(abs(lam * float(y[i]) + (1 - lam) * float(y[j]) - float(targets[i])))
        assert (float(values[i]) == i and float(targets[i]) == float(y[i])) or (fits and min(fits) < 1e-5)


def test_cutmix_label_follows_the_pasted_area():
    torch.manual_seed(5)
    x = torch.cat([torch.zeros(4, 1, 16, 16), torch.ones(4, 1, 16, 16)])
    y = torch.tensor([0.0] * 4 + [1.0] * 4)
    mixed, targets = BatchAugment(strength=0, mixup_alpha=1.0, mix_mode="cutmix").mix(x, y)
    # Each image's label equals the share of its pixels that come from a pneumonia image (value 1).
    torch.testing.assert_close(mixed.mean(dim=(1, 2, 3)), targets)
