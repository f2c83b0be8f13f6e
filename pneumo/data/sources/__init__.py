"""Data sources: each says which files a data set has, their labels, their patients and their split.

`KaggleFolder` reads the Kaggle folder layout (and, with data.synthetic, writes the demo set first);
`LabelTable` reads a label CSV (RSNA, NIH ChestX-ray14, any table; with data.synthetic_table, the demo
table). `ChestXrayDataModule` does everything after that. A new data set is one `DataSource`
subclass and one config in conf/data/ naming it as `source`.
"""
from pneumo.data.sources.base import CARVE, SPLITS, DataSource, Listing, build_source
from pneumo.data.sources.kaggle_folder import HOW_TO_GET_DATA, KaggleFolder
from pneumo.data.sources.label_table import LabelTable

__all__ = ["CARVE", "SPLITS", "DataSource", "HOW_TO_GET_DATA", "KaggleFolder", "LabelTable", "Listing", "build_source"]
