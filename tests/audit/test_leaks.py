"""The training run's leak check on a data module built from the real Hydra config, as training builds it."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pneumo.audit.leaks import (DataLeakWarning, Pair, SharedPatient, confirm_exact, cross_split_leaks,
                                warn_on_leaks)
from pneumo.config import CONFIG_DIR


def _datamodule(root, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.root={root}", f"cache_dir={tmp_path}/cache",
                                                      f"output_dir={tmp_path}/out", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")  # what training does before it calls warn_on_leaks
    return datamodule


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_warn_on_leaks_names_every_planted_leak(planted, tmp_path, cache):
    datamodule = _datamodule(planted.root, tmp_path, "data.val_strategy=folder", f"data.cache={cache}")
    assert "test" not in datamodule.datasets
    with pytest.warns(DataLeakWarning) as caught:
        lines = warn_on_leaks(datamodule)
    assert "test" in datamodule.datasets  # set up to be checked
    message = str(caught[0].message)
    assert "4 image pair(s) and 1 patient(s) cross splits" in message
    assert "train/test: 4" in message and "train/val: 1" in message
    assert len(lines) == 5
    for original, copy in planted.pairs:
        assert sum(original in line and copy in line for line in lines) == 1, (original, copy, lines)
    exact = [line for line in lines if line.startswith("exact duplicate")]
    assert len(exact) == 1 and "person9001_bacteria_9001.jpeg" in exact[0]
    patient, file = planted.patient
    assert [line for line in lines if line.startswith(f"patient {patient} ")] == [
        next(line for line in lines if file in line)]


def test_cross_split_leaks_returns_pairs_then_patients(planted, tmp_path):
    datamodule = _datamodule(planted.root, tmp_path, "data.val_strategy=folder")
    datamodule.setup("test")
    leaks = cross_split_leaks(datamodule)
    pairs = [leak for leak in leaks if isinstance(leak, Pair)]
    patients = [leak for leak in leaks if isinstance(leak, SharedPatient)]
    assert leaks == [*pairs, *patients] and len(pairs) == 4 and len(patients) == 1
    found = {tuple(str(path).removeprefix(f"{planted.root}/") for path in p.paths): p.kind for p in pairs}
    assert found == planted.pairs
    assert all(p.crosses and p.distance <= 24 for p in pairs)
    assert patients[0].patient == planted.patient[0] and patients[0].splits == ("train", "test")


def test_a_clean_set_gives_no_warning(tiny_root, tmp_path):
    datamodule = _datamodule(tiny_root, tmp_path)  # val carved out of train by patient, as by default
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataLeakWarning)
        assert warn_on_leaks(datamodule) == []
    assert set(datamodule.datasets) == {"train", "val", "test"}


def test_exact_pairs_are_confirmed_at_full_resolution(tmp_path):
    from PIL import Image

    from pneumo.audit.facts import file_facts
    from pneumo.data.readers import read_image

    picture = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    touched = picture.copy()
    touched[100, 100] ^= 1  # one grey level on one pixel: invisible at the cached size
    paths = {}
    for name, array, level in (("a", picture, 6), ("b", picture, 1), ("c", touched, 6)):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(array).save(paths[name], compress_level=level)
    shutil.copyfile(paths["a"], tmp_path / "same_bytes.png")
    paths["d"] = str(tmp_path / "same_bytes.png")
    assert open(paths["a"], "rb").read() != open(paths["b"], "rb").read()  # same pixels, other bytes
    assert np.array_equal(read_image(paths["a"], 128), read_image(paths["c"], 128))  # what the cache sees
    sizes = {path: (file_facts(path).width, file_facts(path).height) for path in paths.values()}

    def pair(first, second):
        return Pair("exact", 0, ("train", "test"), (paths[first], paths[second]), (0, 0), (first, second))

    checked = confirm_exact([pair("a", "c"), pair("a", "b"), pair("a", "d")], sizes)
    assert [p.kind for p in checked] == ["near", "exact", "exact"]
