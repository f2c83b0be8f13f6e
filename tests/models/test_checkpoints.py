import pytest
import torch

from pneumo.models.checkpoints import CheckpointError, load_checkpoint, load_weights
from pneumo.models.seed_cnn import SeedCNN


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": SeedCNN(64).state_dict(), "pneumo": {}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)
    other = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), other)
    with pytest.raises(CheckpointError, match="not a pneumo training checkpoint"):
        load_checkpoint(other)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pneumo": Payload()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_another_architecture_names_the_mismatch(tmp_path):
    path = tmp_path / "other.ckpt"
    wrapped = {f"model.{k}": v for k, v in SeedCNN(128).state_dict().items()}
    torch.save({"state_dict": wrapped, "pneumo": {"config": {}}}, path)
    module = torch.nn.Module()
    module.model = SeedCNN(64)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_weights(module, load_checkpoint(path), path)
