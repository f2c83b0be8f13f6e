"""The architecture a Keras file describes, checked against the seed's, and where Keras stores each layer.

The seed (shared/seeds/002) is

    Sequential([data_augmentation, Conv2D(32, 3, padding='same', activation='relu'), MaxPooling2D(),
                Conv2D(64, ...), MaxPooling2D(), Conv2D(128, ...), MaxPooling2D(), Flatten(),
                Dense(128, activation='tanh'), Dropout(0.3), Dense(1, activation='sigmoid')])

with `data_augmentation` a nested Sequential of RandomFlip, RandomRotation, RandomZoom, RandomContrast.
A config is accepted when, after dropping the layers that are the identity at inference (InputLayer, the
augmentation layers, the dropout family, a Rescaling(1/255) before the first conv) and opening nested
models, it is that stack, a single chain; Sequential or Functional, any layer names. Anything else is
refused with the first difference, numbered as Keras numbers `model.layers` (nested: "0.2" is
`model.layers[0].layers[2]`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumo.models.keras_files import KerasImportError

SEED_ARCHITECTURE = ("Conv2D(32, 3x3, same, relu) -> MaxPooling2D -> Conv2D(64) -> MaxPooling2D -> Conv2D(128) -> "
                     "MaxPooling2D -> Flatten -> Dense(128, tanh) -> Dense(1, sigmoid)")
MODEL_CLASSES = {"Sequential", "Functional"}
# Other names Keras serialises for the same classes (aliases, and "Model" for functional models in TF < 2.4).
_ALIASES = {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "Model": "Functional"}
# Identity at inference (`training=False`), so the port may drop them.
AUGMENTATION = {"RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomTranslation",
                "RandomBrightness"}
DROPOUTS = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
            "GaussianDropout", "AlphaDropout"}
_SEED_STACK = [("Conv2D", 32), ("MaxPooling2D", None), ("Conv2D", 64), ("MaxPooling2D", None), ("Conv2D", 128),
               ("MaxPooling2D", None), ("Flatten", None), ("Dense", 128), ("Dense", 1)]


@dataclass
class ConfigLayer:
    """One layer of a model config. `label` is its place in `model.layers` ("3"; nested "0.2"), `children`
    a nested model's `model.layers`, `inbound` a functional layer's input layer names per call."""
    label: str
    name: str
    kind: str
    config: dict[str, Any]
    children: list[ConfigLayer] | None = None
    inbound: list[list[str]] = field(default_factory=list)

    def describe(self) -> str:
        return f"layer {self.label} ('{self.name}')" if self.label else f"the model '{self.name}'"


@dataclass
class SeedPlan:
    """The seed's five layers with weights (3 Conv2D, 2 Dense) as the config places them, and what else
    the port takes from the config."""
    weighted: list[ConfigLayer]
    dropout: float | None
    notes: list[str]


def snake_case(class_name: str) -> str:
    """Keras' `naming.to_snake_case`: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d, RandomFlip -> random_flip.

    Source: keras/src/utils/naming.py; Keras 2's generic_utils.to_snake_case gives the same for these classes.
    """
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def parse_model(config: dict[str, Any], path: Path) -> ConfigLayer:
    """The model config (`model_config` attribute, config.json, model.to_json()) as a tree of ConfigLayer.

    Sequential, Functional (and "Model"), Keras 2 and 3 spellings; a Sequential's leading InputLayer is
    dropped from its children as `Sequential.layers` drops it (keras/src/models/sequential.py `layers`),
    a Functional keeps it (functional.py `layers`: every operation that is a Layer).
    Raises KerasImportError when the top level is not a Sequential or Functional model.
    """
    root = _parse_entry(config, "", path)
    if root.children is None:
        raise KerasImportError(f"{path}: the saved model is a {root.kind}, not a Sequential or Functional model "
                               f"(the seed's is a Sequential: {SEED_ARCHITECTURE})")
    return root


def default_seed_config() -> dict[str, Any]:
    """The seed's Sequential as Keras 3 serialises it, assumed for files that carry no architecture."""
    def layer(kind: str, name: str, **config: Any) -> dict[str, Any]:
        return {"class_name": kind, "config": {"name": name, **config}}

    conv = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "dilation_rate": [1, 1],
            "activation": "relu", "use_bias": True}
    augmentation = [layer("RandomFlip", "random_flip"), layer("RandomRotation", "random_rotation"),
                    layer("RandomZoom", "random_zoom"), layer("RandomContrast", "random_contrast")]
    layers = [{"class_name": "Sequential", "config": {"name": "data_augmentation", "layers": augmentation}}]
    for index, filters in enumerate((32, 64, 128)):
        suffix = f"_{index}" if index else ""
        layers += [layer("Conv2D", f"conv2d{suffix}", filters=filters, **conv),
                   layer("MaxPooling2D", f"max_pooling2d{suffix}", pool_size=[2, 2], strides=[2, 2],
                         padding="valid")]
    layers += [layer("Flatten", "flatten"), layer("Dense", "dense", units=128, activation="tanh", use_bias=True),
               layer("Dropout", "dropout", rate=0.3),
               layer("Dense", "dense_1", units=1, activation="sigmoid", use_bias=True)]
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}


def saving_lib_paths(root: ConfigLayer, container: str = "layers",
                     counts_twice: Callable[[ConfigLayer, str], bool] | None = None) -> dict[str, str]:
    """{layer label: the group saving_lib stores its variables under}, e.g. {"3": "layers/conv2d_1"}.

    Keras' rule (keras/src/saving/saving_lib.py `_save_container_state`, the same in Keras 2.12+'s
    keras/saving/saving_lib.py): a model's `layers` are saved in order under `<model path>/layers/`, each
    named after its CLASS in snake case, with a counter per class name within that model: conv2d, conv2d_1,
    ...; the layer's own name is never used ("names are usually autogenerated and thus not reproducible").
    Nested models repeat the rule under their own path. `container` is "_layer_checkpoint_dependencies" in
    files from Keras 2.12-2.14 (see keras_files.LAYER_CONTAINERS); Keras 2.12/2.13 saved that dict, in which
    every layer with weights appears twice in a row ('layer_with_weights-k' and 'layer-i', keras/engine/
    functional.py `_layer_checkpoint_dependencies`), and counted the duplicate (it skipped visited layers
    only from 2.14 on): `counts_twice(layer, path)` says whether a layer used two counter values.
    """
    paths: dict[str, str] = {}

    def visit(model: ConfigLayer, prefix: str) -> None:
        used: dict[str, int] = {}
        for child in model.children or []:
            path = f"{prefix}{container}/{_unique(snake_case(child.kind), used)}"
            if counts_twice is not None and counts_twice(child, path):
                _unique(snake_case(child.kind), used)
            paths[child.label] = path
            if child.children is not None:
                visit(child, path + "/")

    visit(root, "")
    return paths


def _unique(name: str, used: dict[str, int]) -> str:
    """saving_lib `_get_unique_name`: the first use is bare, then name_1, name_2, ..."""
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def has_weights(layer: ConfigLayer) -> bool:
    """Whether the layer is, or contains, one of the seed's layers with float weights (Conv2D, Dense)."""
    if layer.children is not None:
        return any(has_weights(child) for child in layer.children)
    return layer.kind in ("Conv2D", "Dense")


def leaves(model: ConfigLayer) -> list[ConfigLayer]:
    """The layers inside nested models, in model order (depth first)."""
    out: list[ConfigLayer] = []
    for child in model.children or []:
        out += leaves(child) if child.children is not None else [child]
    return out


def check_seed(root: ConfigLayer, path: Path) -> SeedPlan:
    """Compare the config with the seed's architecture; raise KerasImportError naming the first difference.

    Returns the five layers with weights in order, the dropout rate, and notes (Rescaling dropped, logits
    output).
    """
    notes: list[str] = []
    problem = _chain_problem(root)
    expected = iter(_SEED_STACK)
    seen_first, dropout, weighted = False, None, []
    last: ConfigLayer | None = None
    for layer in leaves(root):
        if problem:
            break
        if layer.kind == "InputLayer" or layer.kind in AUGMENTATION:
            continue
        if layer.kind in DROPOUTS:
            dropout = float(layer.config.get("rate", dropout or 0.3)) if layer.kind == "Dropout" else dropout
            continue
        if layer.kind == "Rescaling" and not seen_first:
            problem = _rescaling_problem(layer, notes)
            continue
        want = next(expected, None)
        if want is None:
            problem = f"{layer.describe()}: a {layer.kind} after the seed's last layer, Dense(1)"
            break
        problem = _layer_problem(layer, *want)
        seen_first, last = True, layer
        if layer.kind in ("Conv2D", "Dense"):
            weighted.append(layer)
    if not problem:
        missing = next(expected, None)
        if missing is not None:
            after = f"after {last.describe()}" if last else "without any Conv2D, pooling or Dense layer"
            problem = f"the model ends {after} where the seed continues with {_spell(*missing)}"
    if problem:
        raise KerasImportError(f"{path}: not the seed's architecture: {problem} (the seed: {SEED_ARCHITECTURE})")
    if _activation(weighted[-1].config) == "linear":
        notes.append("the last Dense layer is linear (the Keras model outputs logits): SeedCNN also returns the "
                     "logit, evaluation applies the sigmoid")
    return SeedPlan(weighted, dropout, notes)


def _layer_problem(layer: ConfigLayer, kind: str, size: int | None) -> str | None:
    if layer.kind != kind:
        return f"{layer.describe()}: a {layer.kind} where the seed has {_spell(kind, size)}"
    c = layer.config
    if kind == "Conv2D":
        checks = [("filters", c.get("filters"), size), ("kernel_size", _pair(c.get("kernel_size")), (3, 3)),
                  ("strides", _pair(c.get("strides", 1)), (1, 1)), ("padding", c.get("padding", "valid"), "same"),
                  ("dilation_rate", _pair(c.get("dilation_rate", 1)), (1, 1)), ("groups", c.get("groups", 1), 1),
                  ("activation", _activation(c), "relu"), ("use_bias", c.get("use_bias", True), True)]
    elif kind == "MaxPooling2D":
        pool = _pair(c.get("pool_size", 2))
        strides = pool if c.get("strides") is None else _pair(c.get("strides"))
        checks = [("pool_size", pool, (2, 2)), ("strides", strides, (2, 2)),
                  ("padding", c.get("padding", "valid"), "valid")]
    elif kind == "Dense":
        checks = [("units", c.get("units"), size),
                  ("activation", _activation(c), "tanh" if size == 128 else ["sigmoid", "linear"]),
                  ("use_bias", c.get("use_bias", True), True)]
    else:
        checks = []
    checks.append(("data_format", c.get("data_format") or "channels_last", "channels_last"))
    for attribute, found, wanted in checks:
        if found != wanted and not (isinstance(wanted, list) and found in wanted):
            seed = " or ".join(_spell_value(attribute, w) for w in wanted) if isinstance(wanted, list) \
                else _spell_value(attribute, wanted)
            return f"{layer.describe()}: {kind} with {_spell_value(attribute, found)} where the seed has {seed}"
    return None


def _spell_value(attribute: str, value: Any) -> str:
    return f"{value} {attribute}" if attribute in ("filters", "units") else f"{attribute}={value!r}"


def _rescaling_problem(layer: ConfigLayer, notes: list[str]) -> str | None:
    """None for a Rescaling the port may drop (scale 1, or the first 1/255, offset 0), else the problem."""
    scale, offset = layer.config.get("scale", 1.0), layer.config.get("offset", 0.0)
    numbers = isinstance(scale, (int, float)) and isinstance(offset, (int, float))
    if numbers and offset == 0 and scale == 1:
        return None
    if numbers and offset == 0 and abs(scale * 255 - 1) < 1e-6:
        if any("Rescaling(1/255)" in note for note in notes):
            return f"{layer.describe()}: a second Rescaling(1/255), which scales the pixels twice"
        notes.append(f"{layer.describe()} is Rescaling(1/255): the Keras model took 0-255 pixels, the "
                     f"imported one takes them in [0, 1] (the same function of the image)")
        return None
    return (f"{layer.describe()}: Rescaling(scale={scale}, offset={offset}) maps the pixels to another range "
            f"than the seed's input, [0, 1] (only Rescaling(1/255) can be dropped)")


def _chain_problem(model: ConfigLayer) -> str | None:
    """A functional model must be one chain, each layer fed by the one before (the seed is a Sequential)."""
    for child in model.children or []:
        if child.children is not None and (found := _chain_problem(child)):
            return found
    if model.kind != "Functional":
        return None
    previous: str | None = None
    for child in model.children or []:
        if child.kind == "InputLayer":
            if previous is not None:
                return f"{child.describe()} is a second input; the seed has one"
        elif previous is not None and child.inbound != [[previous]]:
            return (f"{child.describe()} takes its inputs from {child.inbound}; in the seed each layer takes the "
                    f"output of the one before ('{previous}')")
        previous = child.name
    outputs = [entry[0] for entry in model.config.get("output_layers", []) if isinstance(entry, (list, tuple))]
    if outputs and outputs != [previous]:
        return f"{model.describe()} outputs {outputs}; the seed outputs its last layer ('{previous}')"
    return None


def _parse_entry(entry: dict[str, Any], label: str, path: Path) -> ConfigLayer:
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise KerasImportError(f"{path}: the model config has an entry without a class_name at {label or 'top'}")
    kind = _ALIASES.get(str(entry["class_name"]), str(entry["class_name"]))
    config = entry.get("config")
    layers = config if isinstance(config, list) else None  # Keras 2.0-2.2 wrote a Sequential as a bare list
    config = config if isinstance(config, dict) else {}
    name = str(entry.get("name") or config.get("name") or "?")
    node = ConfigLayer(label, name, kind, config, inbound=_inbound(entry.get("inbound_nodes") or []))
    if kind in MODEL_CLASSES:
        entries = [e for e in (layers if layers is not None else config.get("layers", []))]
        if kind == "Sequential" and entries and isinstance(entries[0], dict) \
                and entries[0].get("class_name") == "InputLayer":
            entries = entries[1:]
        prefix = f"{label}." if label else ""
        node.children = [_parse_entry(e, f"{prefix}{i}", path) for i, e in enumerate(entries)]
    return node


def _inbound(nodes: list[Any]) -> list[list[str]]:
    """Input layer names per call: Keras 2 `[[["conv2d", 0, 0, {}]]]`, Keras 3 `[{"args": [{"class_name":
    "__keras_tensor__", "config": {"keras_history": ["conv2d", 0, 0]}}], "kwargs": {}}]`."""
    def history(value: Any, out: list[str]) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("keras_history"), list) and value["keras_history"]:
                out.append(str(value["keras_history"][0]))
            for item in value.values():
                history(item, out)
        elif isinstance(value, list):
            for item in value:
                history(item, out)

    calls = []
    for node in nodes:
        names: list[str] = []
        if isinstance(node, dict):
            history(node, names)
        elif isinstance(node, list):
            names = [str(e[0]) for e in node if isinstance(e, list) and e and isinstance(e[0], str)]
        calls.append(names)
    return calls


def _spell(kind: str, size: int | None) -> str:
    return {"Conv2D": f"Conv2D({size})", "Dense": f"Dense({size})"}.get(kind, kind)


def _activation(config: dict[str, Any]) -> str:
    value = config.get("activation")
    if isinstance(value, dict):  # serialised as an object
        inner = value.get("config")
        value = inner if isinstance(inner, str) else (inner or {}).get("name") or value.get("class_name")
    return "linear" if value is None else str(value).lower()


def _pair(value: Any) -> tuple | Any:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value) if isinstance(value, int) else value


def input_shape(config: dict[str, Any]) -> tuple | None:
    """The (H, W, C) the model was built for, or None: the first 4-d batch shape in the config (InputLayer
    `batch_shape` in Keras 3, `batch_input_shape` in Keras 2), else Keras 3's `build_config.input_shape`."""
    stack: list[Any] = [config]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            for key in ("batch_shape", "batch_input_shape"):
                shape = node.get(key)
                if isinstance(shape, (list, tuple)) and len(shape) == 4:
                    return tuple(shape[1:])
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(node)
    built = (config.get("build_config") or {}).get("input_shape") if isinstance(config, dict) else None
    return tuple(built[1:]) if isinstance(built, (list, tuple)) and len(built) == 4 else None
