"""Read a Keras weights file (.h5, .weights.h5, .keras) with h5py and zipfile into a neutral form.

No TensorFlow or Keras is imported. Two storage schemes exist, and Keras matches weights differently in each:

- Legacy HDF5 (`model.save("x.h5")`, Keras 2 `model.save_weights("x.h5")`, Keras 3 `model.save("x.h5")`): a
  `layer_names` attribute lists `model.layers` by name, each layer's group has a `weight_names` attribute
  whose entries are dataset paths inside that group (`conv2d/kernel:0` in Keras 2, the variable path
  `sequential/conv2d/kernel` in Keras 3); a full model keeps them under `model_weights` with the
  architecture as JSON in the `model_config` attribute. Keras loads them BY ORDER of the layers that have
  weights, not by name (keras/src/legacy/saving/legacy_h5_format.py `load_weights_from_hdf5_group`;
  Keras 2: keras/saving/legacy/hdf5_format.py). Attributes too large for one HDF5 header are split into
  `layer_names0`, `layer_names1`, ... (`load_attributes_from_hdf5_group`).
- saving_lib (Keras 3 `.keras` / `.weights.h5`, and Keras 2.12+'s `.keras` / `.weights.h5`): every object's
  variables live in `<path>/vars/<i>`, where `<path>` comes from the layer's class and position, not its
  name (keras/src/saving/saving_lib.py `_save_container_state`, `H5IOStore`). The paths are computed in
  `keras_architecture.saving_lib_paths`; here the datasets are only collected. A `.keras` file is a zip
  holding `config.json`, `metadata.json` and `model.weights.h5` (saving_lib `_CONFIG_FILENAME`,
  `_METADATA_FILENAME`, `_VARS_FNAME_H5`).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The group under which a saving_lib file keeps `model.layers`. Keras 2.12-2.14 walked the model's
# attributes in dir() order and reached its `_layer_checkpoint_dependencies` dict before `layers`; Keras 3
# reads such files by renaming the path (saving_lib.py H5IOStore.get: "Fix for 2.13 compatibility").
LAYER_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")


class KerasImportError(ValueError):
    """A file that cannot be imported; the message names the file, what was found and what was expected."""


@dataclass
class LegacyLayer:
    """One entry of a legacy HDF5 file's `layer_names`: the group name and its weights in `weight_names` order."""
    name: str
    weights: list[tuple[str, np.ndarray]]


@dataclass
class KerasFile:
    """What a Keras file holds, before it is matched to a model.

    `scheme` is "legacy" (then `layers` and `top_level` are filled) or "saving_lib" (then `variables` maps
    every dataset under the layers group, e.g. "layers/conv2d/vars/0", to its array, and `container` is the
    name of that group).
    """
    path: Path
    scheme: str
    layout: str
    config: dict[str, Any] | None = None
    keras_version: str | None = None
    layers: list[LegacyLayer] = field(default_factory=list)
    top_level: list[tuple[str, np.ndarray]] = field(default_factory=list)
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    container: str = "layers"


def read_keras_file(path: str | Path) -> KerasFile:
    """Read a Keras .h5 / .weights.h5 / .keras file: arrays as stored (any dtype), config if present.

    Raises KerasImportError (naming the file) for a missing file, a directory (SavedModel), a file that is
    neither HDF5 nor a zip, a zip without `model.weights.h5`, an HDF5 file with no Keras layout, or a
    Keras 1 file (Keras converts those with `preprocess_weights_for_loading`; not supported here).
    """
    import h5py

    path = Path(path).expanduser()
    if path.is_dir():
        raise KerasImportError(f"{path} is a directory (a TensorFlow SavedModel?): save the Keras model as "
                               f"model.save('model.keras') or model.save('model.h5') and import that file")
    if not path.is_file():
        raise KerasImportError(f"{path} does not exist: pass the Keras model file (.h5, .weights.h5 or .keras)")
    try:
        if zipfile.is_zipfile(path):
            return _read_archive(path)
        if not h5py.is_hdf5(path):
            raise KerasImportError(f"{path} is not an HDF5 file (nor a .keras archive): pass the file written by "
                                   f"Keras' model.save(...) or model.save_weights(...)")
        with h5py.File(path, "r") as h5:
            return _read_h5(h5, path, config=None, version=None, where="")
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as error:
        raise KerasImportError(f"{path}: could not be read as a Keras file ({type(error).__name__}: {error})") \
            from error


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A model config (the architecture) from JSON (`model.to_json()`, a .keras archive's config.json), a
    .keras archive, or a full-model .h5 (`model_config` attribute). Raises KerasImportError if there is none."""
    import h5py

    path = Path(path).expanduser()
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "config.json" in archive.namelist():
                    return json.loads(archive.read("config.json"))
        elif h5py.is_hdf5(path):
            with h5py.File(path, "r") as h5:
                if "model_config" in h5.attrs:
                    return json.loads(_text(h5.attrs["model_config"]))
        else:
            config = json.loads(path.read_text())
            if isinstance(config, dict) and "class_name" in config:
                return config
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise KerasImportError(f"--config {path}: could not be read ({type(error).__name__}: {error})") from error
    raise KerasImportError(f"--config {path}: no model config found (expected the JSON of model.to_json(), a "
                           f".keras archive or a full-model .h5)")


def _read_archive(path: Path) -> KerasFile:
    import h5py

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "model.weights.h5" not in names:
            other = [n for n in names if n.startswith("model.weights")]
            why = (f"its weights are stored as {other[0]}, which is not supported: save with the default "
                   f"h5 weights format") if other else "not a .keras model file"
            raise KerasImportError(f"{path}: a zip archive without model.weights.h5 (found {names[:8]}): {why}")
        config = json.loads(archive.read("config.json")) if "config.json" in names else None
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(weights, "r") as h5:
        found = _read_h5(h5, path, config=config, version=metadata.get("keras_version"),
                         where=".keras archive, ")
    if found.scheme != "saving_lib":
        raise KerasImportError(f"{path}: the model.weights.h5 in this archive has the legacy layout "
                               f"(layer_names), not the 'layers' group Keras writes into a .keras archive")
    return found


def _read_h5(h5: Any, path: Path, config: dict[str, Any] | None, version: str | None, where: str) -> KerasFile:
    if config is None and "model_config" in h5.attrs:
        config = json.loads(_text(h5.attrs["model_config"]))
    version = version or (_text(h5.attrs["keras_version"]) if "keras_version" in h5.attrs else None)
    if "model_weights" in h5 and _has_attr(h5["model_weights"], "layer_names"):
        return _read_legacy(h5["model_weights"], path, config, version,
                            where + "legacy HDF5 full model (model_weights, layer_names/weight_names)")
    if _has_attr(h5, "layer_names"):
        return _read_legacy(h5, path, config, version, where + "legacy HDF5 weights (layer_names/weight_names)")
    for container in LAYER_CONTAINERS:
        if container in h5 and hasattr(h5[container], "keys"):
            found = KerasFile(path, "saving_lib", where + f"saving_lib weights ({container}/<class>/vars/<i>)",
                              config, version or _config_version(config), container=container)
            _collect(h5[container], container, found.variables, path)
            return found
    raise KerasImportError(f"{path}: no Keras weights found (top-level entries {sorted(h5.keys())[:10]}, "
                           f"attributes {sorted(h5.attrs.keys())[:10]}): expected a 'layer_names' attribute "
                           f"(model.save('x.h5') / save_weights('x.h5')) or a 'layers' group (x.weights.h5)")


def _read_legacy(group: Any, path: Path, config: dict[str, Any] | None, version: str | None,
                 layout: str) -> KerasFile:
    version = version or (_text(group.attrs["keras_version"]) if "keras_version" in group.attrs else None)
    if version is not None and version.split(".")[0] == "1":
        raise KerasImportError(f"{path}: written by Keras {version}; Keras 1 weights need Keras' own conversion "
                               f"(preprocess_weights_for_loading): load and save the model with Keras 2 or 3")
    found = KerasFile(path, "legacy", layout, config, version or _config_version(config))
    for name in load_string_list(group, "layer_names"):
        if name not in group:
            raise KerasImportError(f"{path}: layer '{name}' is listed in layer_names but has no group")
        found.layers.append(LegacyLayer(name, _legacy_weights(group[name], f"layer '{name}'", path)))
    if "top_level_model_weights" in group:
        found.top_level = _legacy_weights(group["top_level_model_weights"], "top_level_model_weights", path)
    return found


def _legacy_weights(layer: Any, what: str, path: Path) -> list[tuple[str, np.ndarray]]:
    weights = []
    for weight_name in load_string_list(layer, "weight_names"):
        if weight_name not in layer:
            raise KerasImportError(f"{path}: weight '{weight_name}' of {what} is listed in weight_names but "
                                   f"missing from the file")
        weights.append((weight_name, np.asarray(layer[weight_name][()])))
    return weights


def _collect(node: Any, prefix: str, out: dict[str, np.ndarray], path: Path) -> None:
    import h5py

    for key in node:
        item, name = node[key], f"{prefix}/{key}"
        if isinstance(item, h5py.Dataset):
            if _text(item.attrs.get("dtype", "")) == "bfloat16":  # as saving_lib H5IOStore.__setitem__ marks it
                raise KerasImportError(f"{path}: {name} holds bfloat16 weights, which are not supported: "
                                       f"save the model with float32 variables")
            out[name] = np.asarray(item[()])
        else:
            _collect(item, name, out, path)


def _has_attr(node: Any, name: str) -> bool:
    return name in node.attrs or f"{name}0" in node.attrs


def load_string_list(node: Any, name: str) -> list[str]:
    """A list-of-strings HDF5 attribute, joined when Keras split it into name0, name1, ... (header limit).

    Source: keras/src/legacy/saving/legacy_h5_format.py `load_attributes_from_hdf5_group`.
    """
    if name in node.attrs:
        values = list(np.atleast_1d(node.attrs[name]))
    else:
        values, index = [], 0
        while f"{name}{index}" in node.attrs:
            values += list(np.atleast_1d(node.attrs[f"{name}{index}"]))
            index += 1
    return [_text(v) for v in values]


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _config_version(config: dict[str, Any] | None) -> str | None:
    return config.get("keras_version") if isinstance(config, dict) else None
