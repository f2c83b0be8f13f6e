"""Tests for pneumo.evaluation.gradcam: map shape and range, maps that follow the evidence on a task whose
only signal is a corner blob, target-layer resolution, the overlay PNG, and no side effects on the
caller's model."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pneumo.evaluation.gradcam import gradcam_maps, resolve_target_layer, save_overlays
from pneumo.models.seed_cnn import SeedCNN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 64
HALF = SIZE // 2
TOP_LEFT, TOP_RIGHT, BOTTOM_LEFT, BOTTOM_RIGHT = (12, 12), (12, 51), (51, 12), (51, 51)
CORNERS = (TOP_LEFT, TOP_RIGHT, BOTTOM_LEFT, BOTTOM_RIGHT)


def _random_model(seed: int = 0) -> SeedCNN:
    torch.manual_seed(seed)
    return SeedCNN(image_size=SIZE)


def _quadrant_mass(maps: np.ndarray) -> np.ndarray:
    """(N, 4) map mass in the top-left, top-right, bottom-left, bottom-right quadrants."""
    return np.stack([maps[:, :HALF, :HALF].sum((1, 2)), maps[:, :HALF, HALF:].sum((1, 2)),
                     maps[:, HALF:, :HALF].sum((1, 2)), maps[:, HALF:, HALF:].sum((1, 2))], axis=1)


# ---- shape and range -----------------------------------------------------------------------------
def test_maps_have_the_input_shape_lie_in_unit_range_and_are_not_constant():
    model = _random_model()
    inputs = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    maps = gradcam_maps(model, inputs, model.gradcam_layer)
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == (3, SIZE, SIZE)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.all(maps.reshape(3, -1).std(axis=1) > 1e-3)  # each map has structure
    assert np.allclose(maps.reshape(3, -1).max(axis=1), 1.0, atol=1e-4)  # per-image min-max scaling


def test_maps_are_at_the_input_resolution_even_for_non_square_inputs():
    model = _random_model()
    model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1))
    maps = gradcam_maps(model, torch.rand(2, 3, 48, 80), model.gradcam_layer)
    assert maps.shape == (2, 48, 80)


def test_channels_last_inputs_give_the_same_maps():
    model = _random_model().eval()
    inputs = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    plain = gradcam_maps(model, inputs, model.gradcam_layer)
    fast_model = _random_model().to(memory_format=torch.channels_last)
    fast = gradcam_maps(fast_model, inputs.contiguous(memory_format=torch.channels_last),
                        fast_model.gradcam_layer)
    np.testing.assert_allclose(fast, plain, atol=1e-3)


@pytest.mark.filterwarnings("ignore:.*Grad-CAM maps are empty")  # random weights: little NORMAL evidence
def test_explain_picks_the_class_and_predicted_follows_the_logit():
    model = _random_model().eval()
    inputs = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.head[-1].bias -= model(inputs).sort().values[1:3].mean()  # two images each way
        logits = model(inputs)
    assert (logits >= 0).sum() == 2
    pneumonia = gradcam_maps(model, inputs, model.gradcam_layer, explain="pneumonia")
    normal = gradcam_maps(model, inputs, model.gradcam_layer, explain="normal")
    predicted = gradcam_maps(model, inputs, model.gradcam_layer, explain="predicted")
    assert not np.allclose(pneumonia, normal)  # opposite evidence, different maps
    for i, logit in enumerate(logits):
        expected = pneumonia[i] if logit >= 0 else normal[i]
        np.testing.assert_allclose(predicted[i], expected, atol=1e-5)
    with pytest.raises(ValueError, match="explain"):
        gradcam_maps(model, inputs, model.gradcam_layer, explain="pneumonai")


def test_works_on_preprocessed_uint8_grey_images_like_evaluation_does():
    from pneumo.training.module import PneumoniaClassifier

    module = PneumoniaClassifier(_random_model(), optimizer=torch.optim.Adam)  # channels_last model
    images = np.random.default_rng(4).integers(0, 256, (2, 1, SIZE, SIZE), dtype=np.uint8)
    inputs = module.preprocess(torch.from_numpy(images), train=False)
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    maps = gradcam_maps(module.model, inputs, resolve_target_layer(module.model, None))
    assert maps.shape == (2, SIZE, SIZE) and maps.max() > 0


def test_an_empty_map_comes_with_a_warning():
    model = _random_model()
    with torch.no_grad():
        model.head[-1].weight.zero_()  # the logit no longer depends on the features: zero gradient
    with pytest.warns(RuntimeWarning, match="empty"):
        maps = gradcam_maps(model, torch.rand(2, 3, SIZE, SIZE), model.gradcam_layer)
    assert maps.shape == (2, SIZE, SIZE) and np.all(maps == 0)


# ---- the map moves when the evidence moves -------------------------------------------------------
def _blob(center: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)


def _images(rng: np.random.Generator, centers: list[tuple[int, int] | None]) -> torch.Tensor:
    """Noise images; a bright blob at each given center (None: no blob, a negative)."""
    x = rng.uniform(0.0, 0.3, (len(centers), SIZE, SIZE)).astype(np.float32)
    for i, center in enumerate(centers):
        if center is not None:
            x[i] += 0.7 * _blob(center)  # at most 1: no clipping, the noise stays on the blob
    return torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def blob_model() -> SeedCNN:
    """SeedCNN trained on a task whose only signal is a blob in a random corner (label 1) or none.

    Training stops early once the model is right on several batches in a row: an overtrained
    model saturates its tanh layer, which would leave Grad-CAM with no gradient at all.
    """
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(128) % 2
    centers = [CORNERS[rng.integers(4)] if y else None for y in labels]
    x, y = _images(rng, centers), torch.from_numpy(labels).float()
    model = SeedCNN(image_size=SIZE).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    streak = 0
    for _ in range(8):  # epochs; at most 128 steps, usually ~30
        for batch in torch.randperm(len(x)).split(8):
            logits = model(x[batch])
            loss = loss_fn(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            streak = streak + 1 if bool(((logits >= 0).float() == y[batch]).all()) and loss < 0.1 else 0
            if streak >= 4:
                break
        if streak >= 4:
            break
    model.eval()
    with torch.no_grad():
        train_acc = ((model(x) >= 0).float() == y).float().mean().item()
        fresh = _images(np.random.default_rng(1), [CORNERS[i % 4] if i % 2 else None for i in range(32)])
        fresh_acc = ((model(fresh) >= 0).float() == torch.arange(32).remainder(2).float()).float().mean().item()
    assert train_acc >= 0.98, f"the blob task did not train: accuracy {train_acc:.3f}"
    assert fresh_acc >= 0.95, f"the blob task did not generalise: accuracy {fresh_acc:.3f}"
    model.zero_grad(set_to_none=True)
    return model


def test_map_mass_sits_on_a_top_left_blob(blob_model: SeedCNN):
    images = _images(np.random.default_rng(2), [TOP_LEFT] * 6)
    maps = gradcam_maps(blob_model, images, blob_model.gradcam_layer, explain="pneumonia")
    mass = _quadrant_mass(maps)
    assert np.all(mass.argmax(axis=1) == 0), mass  # top-left holds the most mass, in every image
    assert (mass[:, 0] / mass.sum(axis=1)).mean() > 0.5


def test_map_peak_moves_with_the_blob_to_the_bottom_right(blob_model: SeedCNN):
    rng_seed = 2  # the same noise as the top-left test: only the blob's place changes
    top_left = gradcam_maps(blob_model, _images(np.random.default_rng(rng_seed), [TOP_LEFT] * 6),
                            blob_model.gradcam_layer, explain="pneumonia")
    bottom_right = gradcam_maps(blob_model, _images(np.random.default_rng(rng_seed), [BOTTOM_RIGHT] * 6),
                                blob_model.gradcam_layer, explain="pneumonia")
    for before, after in zip(top_left, bottom_right):
        row, col = np.unravel_index(after.argmax(), after.shape)
        assert row >= HALF and col >= HALF, (row, col)
        row, col = np.unravel_index(before.argmax(), before.shape)
        assert row < HALF and col < HALF, (row, col)
    assert np.all(_quadrant_mass(bottom_right).argmax(axis=1) == 3)


@pytest.mark.filterwarnings("ignore:.*Grad-CAM maps are empty")  # no PNEUMONIA evidence in negatives
def test_normal_evidence_is_the_blobs_absence_and_predicted_picks_per_image(blob_model: SeedCNN):
    images = _images(np.random.default_rng(3), [None, None, TOP_RIGHT, BOTTOM_LEFT])
    with torch.no_grad():
        logits = blob_model(images)
    assert (logits < 0).tolist() == [True, True, False, False]
    explain = {e: gradcam_maps(blob_model, images, blob_model.gradcam_layer, explain=e)
               for e in ("pneumonia", "normal", "predicted")}
    np.testing.assert_allclose(explain["predicted"][:2], explain["normal"][:2], atol=1e-5)
    np.testing.assert_allclose(explain["predicted"][2:], explain["pneumonia"][2:], atol=1e-5)
    assert _quadrant_mass(explain["pneumonia"][2:]).argmax(axis=1).tolist() == [1, 2]  # on the blob
    assert np.all(explain["normal"][:2].reshape(2, -1).max(axis=1) > 0)  # a negative has NORMAL evidence
    assert _quadrant_mass(explain["normal"][2:]).argmin(axis=1).tolist() == [1, 2]  # ... never on a blob


# ---- which layer ---------------------------------------------------------------------------------
def test_resolve_target_layer_defaults_to_the_models_choice():
    model = _random_model()
    assert resolve_target_layer(model, None) is model.gradcam_layer
    assert resolve_target_layer(model, None) is model.features[6]  # the last conv


def test_resolve_target_layer_by_dotted_name():
    model = _random_model()
    assert resolve_target_layer(model, "features.3") is model.features[3]
    assert resolve_target_layer(model, "features.6") is model.features[6]


def test_resolve_target_layer_errors_name_the_key_and_valid_layers():
    model = _random_model()
    with pytest.raises(ValueError, match="features.6"):
        resolve_target_layer(model, "features.60")
    with pytest.raises(ValueError, match="not a module"):
        resolve_target_layer(model, "")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    with pytest.raises(ValueError, match=r"gradcam\.target_layer=.*0"):
        resolve_target_layer(plain, None)
    assert resolve_target_layer(plain, "0") is plain[0]


# ---- the figure ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, SIZE, SIZE), (5, 1, SIZE, SIZE), (5, 3, SIZE, SIZE)])
def test_save_overlays_writes_a_sane_png_and_closes_its_figure(tmp_path: Path, shape: tuple[int, ...]):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    maps = rng.random((5, SIZE, SIZE)).astype(np.float32)
    open_before = plt.get_fignums()
    path = save_overlays(images, maps, [f"image {i}\np=0.{i}" for i in range(5)], tmp_path / "sub" / "cam.png")
    assert path == tmp_path / "sub" / "cam.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
    assert 400 <= width <= 4000 and 200 <= height <= 4000
    assert width > height  # 5 images: a grid of 4 columns and 2 rows
    assert plt.get_fignums() == open_before


def test_save_overlays_resizes_maps_and_rejects_mismatches(tmp_path: Path):
    images = np.zeros((2, 1, SIZE, SIZE), np.uint8)
    path = save_overlays(images, np.random.default_rng(6).random((2, 16, 16)), ["a", "b"], tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="titles"):
        save_overlays(images, np.zeros((2, SIZE, SIZE)), ["only one"], tmp_path / "b.png")
    with pytest.raises(ValueError, match="maps"):
        save_overlays(images, np.zeros((3, SIZE, SIZE)), ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="images"):
        save_overlays(np.zeros((2, 2, SIZE, SIZE), np.uint8), np.zeros((2, SIZE, SIZE)), ["a", "b"],
                      tmp_path / "d.png")
    assert not (tmp_path / "b.png").exists()


# ---- no side effects on the caller's model -------------------------------------------------------
def test_no_grads_are_left_on_a_fresh_model():
    model = _random_model()
    gradcam_maps(model, torch.rand(2, 3, SIZE, SIZE), model.gradcam_layer)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not model.features[6]._forward_hooks and not model.features[6]._backward_hooks


def test_existing_grads_training_mode_and_frozen_flags_survive():
    model = _random_model()
    model(torch.rand(2, 3, SIZE, SIZE)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.features[0].weight.requires_grad_(False)
    model.train()
    model.head[3].eval()  # a mixed mode must come back exactly
    gradcam_maps(model, torch.rand(2, 3, SIZE, SIZE), model.gradcam_layer)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, before[name], msg=name)
    assert not model.features[0].weight.requires_grad and model.features[3].weight.requires_grad
    assert model.training and model.features.training and not model.head[3].training


def test_works_inside_no_grad_and_inference_mode():
    model = _random_model()
    base = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = gradcam_maps(model, base, model.gradcam_layer)
    with torch.inference_mode():
        inputs = base.clone()  # an inference tensor
        b = gradcam_maps(model, inputs, model.gradcam_layer)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.max() > 0
