"""The review page: `python -m pneumo.app model=PATH.ckpt|PATH.onnx|models:/NAME@ALIAS [host=...] [port=...]`.

Hydra composes conf/app.yaml (from the config store: see pneumo/app/settings.py); a mistaken command line
is answered with one message and exit code 2 before torch is imported. Serves until Ctrl+C.
"""
import hydra
from omegaconf import DictConfig

from pneumo.app.settings import CONFIG_NAME, register_config
from pneumo.command_line import exit_on_mistakes

register_config()


@hydra.main(version_base="1.3", config_path=None, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    from pneumo.app.workspace import temporary_workspace

    with temporary_workspace() as work:  # before torch is imported: its cache folder goes in there too
        # torch, FastAPI, MLflow: imported once the command line is right
        from pneumo.app.server import serve

        serve(cfg, work)


if __name__ == "__main__":
    exit_on_mistakes(CONFIG_NAME, config_dir=None)  # one message, exit code 2: before Hydra and the heavy imports
    main()
