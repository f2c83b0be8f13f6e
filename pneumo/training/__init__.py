"""Fitting a model: the LightningModule (loss, validation metrics, operating threshold), batch
augmentation on the device, callbacks, the training run behind train.py, and sweep summaries.

May import data, models, evaluation (metrics, thresholds, plots) and tracking; nothing outside bench
imports training, except by `_target_` name in the configs.
"""
