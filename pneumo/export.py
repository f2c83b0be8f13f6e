"""Export a trained checkpoint for deployment: `python -m pneumo.export ckpt=PATH [format=onnx]`.

Writes model.onnx (preprocessing and temperature inside the graph) and its sidecar model.json into the
output folder, and logs the model into the checkpoint's MLflow training run (`pneumo.deploy.export`)."""
import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra's app: the export the config names."""
    # torch, onnx and MLflow: imported only once the command line has passed the check
    from pneumo.deploy.export import run_export

    run_export(cfg)


if __name__ == "__main__":
    exit_on_mistakes("export")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
