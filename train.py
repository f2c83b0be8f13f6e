"""Train a pneumonia classifier: `python train.py data=synthetic trainer.max_epochs=3`."""
import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's app: the composed config in, the objective out (for sweepers)."""
    # torch, Lightning and MLflow: imported only once the command line has passed the check
    from pneumo.training.run import run_training

    return run_training(cfg)


if __name__ == "__main__":
    exit_on_mistakes("train")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
