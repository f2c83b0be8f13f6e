"""pneumo's Optuna sweeper for Hydra: `python train.py hparams_search=optuna` (conf/hparams_search/).

Thin: Hydra finds sweepers only in the `hydra_plugins` namespace package, so the plugin lives here and
hands the work to `pneumo.search` (study, storage, resume, workers, pruning, MLflow parent run, plots).
Nothing heavy is imported until a sweep starts: Hydra imports every plugin module at start-up.
"""
