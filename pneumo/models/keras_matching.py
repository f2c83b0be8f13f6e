"""Find the seed's five weighted layers in a Keras file the way Keras itself finds them.

- saving_lib files (.keras, .weights.h5): by path, from each layer's class and position in the model
  (`keras_architecture.saving_lib_paths`); a layer's own variables are `<path>/vars/0`, `vars/1`, ... in the
  order the layer created them, kernel then bias for Conv2D and Dense (keras/src/layers/layer.py
  `save_own_variables`); Keras refuses a group holding another count ("Layer 'x' expected 2 variables, but
  received N variables during loading", `load_own_variables`).
- legacy .h5: by order. Keras keeps the file's layers whose `weight_names` is not empty and pairs them, in
  order, with the model's layers that have weights; their weights pair in `weight_names` order with the
  layer's `trainable_weights + non_trainable_weights` (keras/src/legacy/saving/legacy_h5_format.py
  `load_weights_from_hdf5_group`, `_legacy_weights`).

Integer variables are the random generators' state of augmentation and dropout layers (Keras 3
`SeedGenerator`, TF 2's `StateVar`); they do nothing at inference and are skipped. Float weights the seed's
model has no place for are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo.models.keras_architecture import ConfigLayer, SeedPlan, has_weights, saving_lib_paths
from pneumo.models.keras_files import KerasFile, KerasImportError


@dataclass
class MatchedLayer:
    """One of the seed's Conv2D / Dense layers: the config layer, where its weights were found, and them
    (kernel (kh, kw, in, out) or (in, out), bias (out,), as stored)."""
    layer: ConfigLayer
    where: str
    kernel: np.ndarray
    bias: np.ndarray

    def describe(self) -> str:
        return (f"{self.layer.describe()}, a {self.layer.kind}, from {self.where}: kernel "
                f"{tuple(self.kernel.shape)} bias {tuple(self.bias.shape)}")


def match_weights(file: KerasFile, root: ConfigLayer, plan: SeedPlan) -> list[MatchedLayer]:
    """The kernel and bias of each of `plan.weighted`, in that order; KerasImportError names the first
    layer Keras would not find, or the first float weight left over."""
    if file.scheme == "legacy":
        return _match_legacy(file, root, plan)
    if file.container == "layers":
        schemes = [False]
    else:  # Keras 2.12-2.14: see saving_lib_paths on the doubled counter of 2.12 and 2.13
        version = file.keras_version or ""
        schemes = [True] if version.startswith(("2.12", "2.13")) else [False] if version.startswith("2.14") \
            else [False, True]
    first_error: KerasImportError | None = None
    for doubled in schemes:
        counts_twice = (lambda layer, path: has_weights(layer) or _holds_data(file, path)) if doubled else None
        try:
            return _match_paths(file, plan, saving_lib_paths(root, file.container, counts_twice))
        except KerasImportError as error:
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _holds_data(file: KerasFile, group: str) -> bool:
    return any(key.startswith(group + "/") for key in file.variables)


def _match_paths(file: KerasFile, plan: SeedPlan, paths: dict[str, str]) -> list[MatchedLayer]:
    matched, used = [], set()
    for layer in plan.weighted:
        group = paths[layer.label]
        own = {key[len(group) + 6:]: value for key, value in file.variables.items()
               if key.startswith(group + "/vars/") and "/" not in key[len(group) + 6:]}
        if not own:
            floats = [key for key, value in file.variables.items() if _is_float(value)]
            raise KerasImportError(
                f"{file.path}: no weights at {group}/vars for {layer.describe()}, a {layer.kind} (Keras stores a "
                f"layer under its class name and its place among the model's layers of that class, whatever "
                f"the layer's name); the file holds float weights at {_listing(floats)}")
        if sorted(own) != ["0", "1"]:
            raise KerasImportError(
                f"{file.path}: {group} holds {len(own)} variables ({', '.join(sorted(own))}) where the seed's "
                f"{layer.kind} has 2 (kernel, bias); Keras refuses this too ('expected 2 variables')")
        used |= {f"{group}/vars/{key}" for key in own}
        matched.append(MatchedLayer(layer, group, own["0"], own["1"]))
    left = [key for key, value in file.variables.items() if key not in used and _is_float(value)]
    if left:
        raise KerasImportError(
            f"{file.path}: float weights at {left[0]} (shape {tuple(file.variables[left[0]].shape)}) that the "
            f"seed's model has no place for ({len(left)} such); the seed's weights are at "
            f"{', '.join(m.where for m in matched)}")
    return matched


def _match_legacy(file: KerasFile, root: ConfigLayer, plan: SeedPlan) -> list[MatchedLayer]:
    owners = [child for child in root.children or [] if has_weights(child)]
    stored = [(layer, [(n, w) for n, w in layer.weights if _is_float(w)]) for layer in file.layers if layer.weights]
    stored = [(layer, weights) for layer, weights in stored if weights]  # integer-only: RNG state, skipped
    if len(stored) != len(owners):
        found = "; ".join(f"'{layer.name}' {[tuple(w.shape) for _, w in weights]}" for layer, weights in stored)
        raise KerasImportError(
            f"{file.path}: {len(stored)} layers with float weights in the file ({found or 'none'}) where the "
            f"seed's model has {len(owners)} ({', '.join(o.describe() for o in owners)}); Keras matches a "
            f"legacy .h5 by the order of the layers with weights ('Layer count mismatch')")
    matched = []
    for k, ((layer, weights), owner) in enumerate(zip(stored, owners)):
        inside = [w for w in plan.weighted if w.label == owner.label or w.label.startswith(owner.label + ".")]
        if len(weights) != 2 * len(inside):
            found = ", ".join(f"{n} {tuple(w.shape)}" for n, w in weights)
            raise KerasImportError(
                f"{file.path}: layer #{k} with weights, '{layer.name}' in the file, {owner.describe()} in the "
                f"model, holds {len(weights)} float weights ({found}) where the seed's {owner.kind} has "
                f"{2 * len(inside)} (kernel and bias); Keras: 'Weight count mismatch'")
        for index, seed_layer in enumerate(inside):
            (kernel_name, kernel), (bias_name, bias) = weights[2 * index], weights[2 * index + 1]
            matched.append(MatchedLayer(seed_layer, f"'{layer.name}'/{kernel_name}, {bias_name}", kernel, bias))
    extra = [(n, w) for n, w in file.top_level if _is_float(w)]
    if extra:
        raise KerasImportError(f"{file.path}: top_level_model_weights holds {extra[0][0]} "
                               f"{tuple(extra[0][1].shape)}; the seed's model has no weights of its own")
    return matched


def _is_float(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.floating)


def _listing(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "no place at all"
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
