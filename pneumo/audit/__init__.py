"""Data audit: what a data set holds and whether its splits leak, before anyone trusts a model trained on it.

`python -m pneumo.audit data=...` (run.py) counts images per split and class, reads image sizes, modes
and bit depths from file headers (facts.py), hashes every decoded image exactly and perceptually
(hashing.py, fingerprints.py) to find exact and near-duplicate pairs within and across splits and
patients on several splits (leaks.py), flags images worth a look (outliers.py), draws the figures
(figures.py), writes audit.md and audit.json (page.py) and logs them to MLflow. `warn_on_leaks` in
leaks.py is the cheap cross-split check a training run calls on the data module it already decoded.

This package may import `pneumo.data`, `pneumo.evaluation.plots` helpers, `pneumo.tracking`,
`pneumo.config` and (the entry point's command-line check) `pneumo.command_line`; never `pneumo.training`
(training imports it, not the other way round).
"""
