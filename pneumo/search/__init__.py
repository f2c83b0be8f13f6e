"""Hyperparameter search that survives: the Optuna study behind `hparams_search=optuna` (persistent
storage beside the MLflow store, resume, parallel workers, pruning), its MLflow parent run and plots.
Hydra finds the sweeper through the thin plugin in `hydra_plugins/`.

May import config, paths and tracking; training reports to it through a callback, never the reverse.
"""
