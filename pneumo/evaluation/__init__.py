"""Scoring a trained model: clinical metrics with bootstrap intervals, the operating threshold, plots,
Grad-CAM, the report (printed table, Markdown), predictions.csv and evaluate.py's run.

May import data, models and tracking; never training (the module is rebuilt by `models.factory`).
"""
