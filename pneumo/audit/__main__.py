"""Data audit: `python -m pneumo.audit [data=...] [audit.fail_on=leak] [key=value ...]` (Hydra, conf/audit.yaml).

Exits 1 under audit.fail_on=leak when an image or a patient crosses splits, after writing everything;
2 for a mistaken command line (nothing written).
"""
import sys

import hydra
from omegaconf import DictConfig

from pneumo.command_line import exit_on_mistakes
from pneumo.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="audit")
def main(cfg: DictConfig) -> None:
    # A wrong audit.fail_on was answered with exit code 2 by exit_on_mistakes (pneumo/config_schema.py): exit 1
    # stays reserved for "a leak was found" in CI.
    from pneumo.audit.run import leak_failure, run_audit  # torch, Lightning, MLflow: once the command line is right

    payload = run_audit(cfg)
    message = leak_failure(cfg.audit.fail_on, payload, cfg.output_dir)
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    exit_on_mistakes("audit")  # one message, exit code 2, nothing written: before Hydra and the heavy imports
    main()
