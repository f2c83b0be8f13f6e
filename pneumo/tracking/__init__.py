"""MLflow glue: the logger behind every run (store set-up, params, tags, artifacts, what could not be
logged), and the way back from an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION,
runs:/RUN_ID/model) to its checkpoint (`registry.resolve_model_checkpoint`). The MLflow model itself and
the registry's promotion live in `pneumo.deploy`.

Imports `pneumo.config` only, so training and evaluation can both use it.
"""
