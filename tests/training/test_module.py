from functools import partial

import pytest
import torch

from pneumo.models.seed_cnn import SeedCNN
from pneumo.training.module import PneumoniaClassifier, epoch_figures
from pneumo.training.augment import BatchAugment

# Two batches; at threshold 0.5: TP 3, FN 1, FP 1, TN 2 (worked out by hand).
BATCHES = [(torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1, 0, 0])),
           (torch.tensor([0.4, 0.8, 0.1, 0.7]), torch.tensor([1, 1, 0, 1]))]


def test_epoch_figures_use_the_operating_threshold_and_the_evaluation_names():
    labels = torch.cat([y for _, y in BATCHES]).numpy()
    probs = torch.cat([p for p, _ in BATCHES]).numpy()
    values = epoch_figures(labels, probs, 0.5, "val")
    assert (values["val/tp"], values["val/fn"], values["val/fp"], values["val/tn"]) == (3, 1, 1, 2)
    assert values["val/sensitivity"] == pytest.approx(3 / 4)       # a per-batch mean would give 0.833
    assert values["val/ppv"] == pytest.approx(3 / 4)
    assert values["val/specificity"] == pytest.approx(2 / 3)
    assert values["val/accuracy"] == pytest.approx(5 / 7)
    assert values["val/auroc"] == pytest.approx(11 / 12)     # 11 of 12 positive-negative pairs ordered
    # At an operating threshold of 0.35 the 0.4 positive is caught too; the _at_0.5 figures stay as above.
    lowered = epoch_figures(labels, probs, 0.35, "val")
    assert (lowered["val/tp"], lowered["val/fn"]) == (4, 0) and lowered["val/sensitivity"] == 1.0
    assert lowered["val/sensitivity_at_0.5"] == pytest.approx(3 / 4)
    assert lowered["val/auroc"] == values["val/auroc"] and "val/auroc_at_0.5" not in lowered
    assert not any(name.endswith(("/recall", "/precision", "/acc")) for name in values)


def test_validation_epoch_logs_every_image_once_at_its_threshold():
    module = PneumoniaClassifier(SeedCNN(32), optimizer=None, threshold_policy="youden")
    module.on_validation_epoch_start()
    for probs, labels in BATCHES:
        module._scores["val"].append((labels, probs))
    logged = {}
    module.log_dict = lambda values, **_: logged.update(values)  # the figures, as Lightning would receive them
    module.on_validation_epoch_end()
    assert sum(logged[f"val/{k}"] for k in ("tp", "fp", "tn", "fn")) == 7
    assert logged["val/threshold"] == module.threshold["value"] != 0.5
    assert module.validation_figures()["at_threshold"]["sensitivity"] == logged["val/sensitivity"]


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
