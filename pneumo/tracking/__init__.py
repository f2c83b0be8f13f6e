"""MLflow glue: the logger behind every run (store set-up, params, tags, artifacts, what could not be
logged), and the model in MLflow's format for `mlflow models serve`.

Imports `pneumo.config` only, so training and evaluation can both use it.
"""
