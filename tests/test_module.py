from functools import partial

import pytest
import torch

from pneumo.models import SeedCNN
from pneumo.module import PneumoniaClassifier, epoch_metrics, flatten_epoch_metrics
from pneumo.transforms import BatchAugment

# Two batches; at threshold 0.5: TP 3, FN 1, FP 1, TN 2 (worked out by hand).
BATCHES = [(torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1, 0, 0])),
           (torch.tensor([0.4, 0.8, 0.1, 0.7]), torch.tensor([1, 1, 0, 1]))]


def test_epoch_metrics_accumulate_over_the_epoch_and_match_a_hand_computation():
    metrics = epoch_metrics()
    for probs, labels in BATCHES:
        metrics.update(probs, labels)
    values = flatten_epoch_metrics(metrics.compute(), "val")
    assert (values["val/tp"], values["val/fn"], values["val/fp"], values["val/tn"]) == (3, 1, 1, 2)
    assert float(values["val/recall"]) == pytest.approx(3 / 4)       # a per-batch mean would give 0.833
    assert float(values["val/precision"]) == pytest.approx(3 / 4)
    assert float(values["val/specificity"]) == pytest.approx(2 / 3)
    assert float(values["val/acc"]) == pytest.approx(5 / 7)
    assert float(values["val/auroc"]) == pytest.approx(11 / 12)     # 11 of 12 positive-negative pairs ordered


def test_preprocess_scales_expands_and_augments_only_in_training():
    module = PneumoniaClassifier(SeedCNN(32), optimizer=partial(torch.optim.Adam, lr=1e-3),
                                 augment=BatchAugment(1.0), channels_last=False)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    evaluated = module.preprocess(images, train=False)
    assert evaluated.shape == (4, 3, 32, 32) and evaluated.dtype == torch.float32
    torch.testing.assert_close(evaluated[:, 0], images[:, 0].float() / 255)
    torch.manual_seed(0)
    assert not torch.allclose(module.preprocess(images, train=True), evaluated)


def test_normalisation_constants_apply_when_configured():
    module = PneumoniaClassifier(SeedCNN(32), optimizer=None, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                                 channels_last=False)
    images = torch.full((1, 1, 32, 32), 255, dtype=torch.uint8)
    assert torch.allclose(module.preprocess(images, train=False), torch.full((1, 3, 32, 32), 2.0))


def test_threshold_follows_the_policy_on_validation_scores():
    module = PneumoniaClassifier(SeedCNN(32), optimizer=None, threshold_policy="sensitivity",
                                 target_sensitivity=0.75)
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    probs = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.05])
    chosen = module._choose_threshold(labels, probs)
    assert chosen["policy"] == "sensitivity" and chosen["value"] == pytest.approx(0.7)
    assert module._choose_threshold(torch.ones(4), torch.rand(4))["policy"] == "fixed"
