"""The networks and their files: the seed's three-block CNN (`seed_cnn`), pretrained backbones
(`backbones`), the Keras import (`keras_files` reads .h5/.weights.h5/.keras, `keras_architecture` checks the
architecture and computes Keras' weight paths, `keras_matching` pairs the weights, `keras_import` converts
and is the command line), reading checkpoints (`checkpoints`), and building the LightningModule a config
describes (`factory`).

Imports `pneumo.config` only; never data, training, evaluation or tracking (the LightningModule is built
by its `_target_` name from the config).
"""
