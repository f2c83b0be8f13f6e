"""`TableDataModule`: the name label-table runs were built with before data sources existed.

Checkpoints written before then store `_target_: pneumo.data_table.TableDataModule` (rewritten on load to
this module by `pneumo.models.checkpoints.LEGACY_TARGETS`) with flat keyword arguments (csv, image_dir,
label, ..., image_size, cache, ...). This builds today's one `ChestXrayDataModule` from them with a
`LabelTable` source; it adds no behaviour of its own. New configs name the module and the source
directly (conf/data/table.yaml).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.sources import LabelTable
from pneumo.data.tables import TableRecords


class TableDataModule(ChestXrayDataModule):
    """`ChestXrayDataModule(source=LabelTable, ...)` under its pre-source name and signature.

    Args:
        csv, image_dir, id_column, label: the `LabelTable` settings it cannot do without; every other
            keyword is the data module's (image_size, test_fraction, cache, ...) or the table's
            (file_template, patient_column, official_split, evaluate_split, synthetic_table, name).

    Raises:
        ValueError: as `ChestXrayDataModule` and `LabelTable` do (e.g. data.val_strategy=folder).
    """

    def __init__(self, csv: str | Path, image_dir: str | Path, id_column: str, label: Mapping[str, Any],
                 **options: Any) -> None:
        super().__init__(source=LabelTable, csv=csv, image_dir=image_dir, id_column=id_column, label=label, **options)

    def table(self) -> TableRecords:
        """The label table as read (`LabelTable.table`), for callers written against this class."""
        return self.source.table()
