"""pneumo: chest X-ray pneumonia classification with PyTorch Lightning, Hydra and MLflow.

The path of one image, room by room: `data` reads and caches it and serves batches; `models` holds the
network; `training` fits it; `evaluation` scores it and writes the clinical report; `tracking` records
all of it in MLflow. `demo` writes the built-in synthetic data sets and `bench` measures speed.
Imports run one way: data and models -> evaluation -> training; tracking is used by both and imports
neither; demo is used by data; bench may import anything but nothing imports bench.
"""
