"""The built-in synthetic data sets, written as real files in real layouts so the same code path runs
offline: the Kaggle-style JPEG folder (`synthetic`) and the RSNA-style DICOM table (`synthetic_table`).

Imports numpy, Pillow and pydicom only; nothing else in pneumo.
"""
