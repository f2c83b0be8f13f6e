"""Train a pneumonia classifier: `python train.py data=synthetic trainer.max_epochs=3`."""
import hydra
from omegaconf import DictConfig

from pneumo.config import CONFIG_DIR, exit_on_unknown_keys
from pneumo.training import run_training


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    return run_training(cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("train")
    main()
