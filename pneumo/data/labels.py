"""The two classes and what the labels mean: the one place that says so.

Label 1 is PNEUMONIA, the positive class (a positive prediction is a pneumonia call); label 0 is NORMAL.
Sensitivity is the share of PNEUMONIA images called positive, specificity the share of NORMAL images
called negative. Folder names, label tables, metrics, plots and reports all take their names from here.
"""
from __future__ import annotations

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
CLASS_TO_IDX = {name: index for index, name in enumerate(CLASS_NAMES)}
POSITIVE_CLASS = CLASS_NAMES[1]
NEGATIVE_CLASS = CLASS_NAMES[0]
