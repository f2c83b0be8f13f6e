"""A trained model on its way to the reading room: the ONNX export with its sidecar, the runtimes that
score images (ONNX Runtime or PyTorch), bulk prediction over whole archives, the MLflow model that wraps a
weights-only checkpoint, the Model Registry and the champion/challenger promotion.

May import config, paths, data, models, evaluation and tracking; never training (checkpoints are rebuilt
through `pneumo.evaluation.trained`), the app or the benchmarks.
"""
