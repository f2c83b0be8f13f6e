"""Clinical report for a trained checkpoint: `python evaluate.py ckpt=PATH [data=...]`."""
import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra's app: the report (or predictions) for the checkpoint the config names."""
    # torch, Lightning and MLflow: imported only once the command line has passed the check
    if cfg.get("predict_dir"):  # a folder of any size, streamed, on PyTorch or ONNX Runtime (runtime=)
        from pneumo.deploy.bulk import run_bulk_prediction

        run_bulk_prediction(cfg)
        return
    from pneumo.evaluation.run import run_evaluation

    run_evaluation(cfg)


if __name__ == "__main__":
    exit_on_mistakes("evaluate")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
