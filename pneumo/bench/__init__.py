"""Benchmarks behind `python -m pneumo.bench`: training throughput against the model-only ceiling on a
Kaggle-style folder (`folder`) or an NIH-scale table (`table`), per model config.

`cli` parses the command line and runs one of the two; both share `machine` (device, memory, load),
`measure` (decode rates, the compute ceiling, epoch timing), `pipeline` (cache build and `Trainer.fit`)
and `models` (the conf/model config read with OmegaConf). `table_data` writes the NIH-layout set and
`memory` samples /proc. Imports run one way: cli -> folder, table -> pipeline -> measure -> models,
machine; no module imports `cli`, `folder` or `table` but `cli`.

Importable without MLflow or Hydra (a GPU machine may have neither); OmegaConf alone is needed, for the
model configs. May import anything in pneumo that keeps that true; nothing imports bench.
"""
