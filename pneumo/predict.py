"""Score a folder of images of any size: `python -m pneumo.predict ckpt=PATH predict_dir=FOLDER [runtime=onnx]`.

The same as `evaluate.py ckpt=PATH predict_dir=FOLDER`: streamed, parallel decoding, resumable
predictions.csv, on PyTorch or ONNX Runtime (`pneumo.deploy.bulk`)."""
import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra's app: predictions.csv for the folder the config names."""
    # torch, onnxruntime and MLflow: imported only once the command line has passed the check
    from pneumo.deploy.bulk import run_bulk_prediction

    run_bulk_prediction(cfg)


if __name__ == "__main__":
    exit_on_mistakes("predict")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
