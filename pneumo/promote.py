"""Champion/challenger promotion: `python -m pneumo.promote name=pneumo version=N [data=...] [force=true]`.

Scores registered version N and the current `champion` on the test split of the data config, prints the
paired AUROC difference with its bootstrap interval and the decision, and moves the alias when the
challenger is not worse (`pneumo.deploy.promote` has the rule). Hydra composes conf/promote.yaml (the store:
tracking_uri=, else MLFLOW_TRACKING_URI, else mlruns/mlflow.db). Exit
status 0 whatever the decision (it is printed, tagged on the version and written to promotion.json); 1 for
an error (a version that does not exist, an unreachable store); 2 for a mistaken command line (nothing
written, answered before torch and MLflow are imported).
"""
import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="promote")
def main(cfg: DictConfig) -> None:
    from pneumo.deploy.promote import run_promotion  # torch, Lightning, MLflow: once the command line is right

    run_promotion(cfg)


if __name__ == "__main__":
    exit_on_mistakes("promote")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
