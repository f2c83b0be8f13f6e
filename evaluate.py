"""Clinical report for a trained checkpoint: `python evaluate.py ckpt=PATH [data=...]`."""
import hydra
from omegaconf import DictConfig

from pneumo.config import CONFIG_DIR, exit_on_unknown_keys
from pneumo.evaluation import run_evaluation


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_evaluation(cfg)


if __name__ == "__main__":
    exit_on_unknown_keys("evaluate")
    main()
