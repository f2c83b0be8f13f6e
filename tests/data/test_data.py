import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.cache import cache_key, decode_all
from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.readers import read_image
from pneumo.training.module import PneumoniaClassifier
from pneumo.models.seed_cnn import SeedCNN


def _datamodule(root, tmp_path, **kwargs):
    options = dict(image_size=64, batch_size=16, num_workers=0, cache="memory", seed=0,
                   output_dir=str(tmp_path / "out"))
    options.update(kwargs)
    return ChestXrayDataModule(str(root), **options)


def test_class_mapping_is_normal_0_pneumonia_1(tiny_root, tmp_path):
    dm = _datamodule(tiny_root, tmp_path)
    dm.setup("fit")
    for split in ("train", "val"):
        for file, label in zip(dm.files[split], dm.labels[split]):
            assert label == (1 if "/PNEUMONIA/" in file else 0)
    assert (tmp_path / "out" / "split.json").is_file()


def test_a_third_class_folder_is_refused(tiny_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    (root / "train" / "COVID").mkdir()
    shutil.copy(next((root / "train" / "NORMAL").iterdir()), root / "train" / "COVID" / "x.jpeg")
    with pytest.raises(ValueError, match="COVID"):
        _datamodule(root, tmp_path).setup("fit")


def test_missing_root_and_split_name_the_path_and_the_way_out(tiny_root, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        _datamodule(tmp_path / "nowhere", tmp_path).setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "data=synthetic" in message and "Kaggle" in message
    root = tmp_path / "no_test"
    shutil.copytree(tiny_root / "train", root / "train")
    with pytest.raises(FileNotFoundError, match=str(root / "test")):
        _datamodule(root, tmp_path).setup("test")


def test_batches_are_uint8_images_with_float_labels(tiny_root, tmp_path):
    dm = _datamodule(tiny_root, tmp_path)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 64, 64)
    assert labels.dtype == torch.float32 and set(labels.tolist()) <= {0.0, 1.0}


def test_cached_and_uncached_pipelines_give_the_same_tensors(tiny_root, tmp_path):
    batches = {}
    for cache in ("memory", "disk", "none"):
        dm = _datamodule(tiny_root, tmp_path, cache=cache, cache_dir=str(tmp_path / "cache"))
        dm.setup("test")
        batches[cache] = next(iter(dm.test_dataloader()))
    for cache in ("disk", "none"):
        assert torch.equal(batches[cache][0], batches["memory"][0])
        assert torch.equal(batches[cache][1], batches["memory"][1])


def test_disk_cache_is_reused_and_invalidated_when_a_file_changes(tiny_root, tmp_path):
    files = sorted(str(p) for p in (tiny_root / "test" / "NORMAL").glob("*.jpeg"))[:4]
    copies = []
    for file in files:
        copies.append(str(tmp_path / "imgs" / file.rsplit("/", 1)[1]))
        (tmp_path / "imgs").mkdir(exist_ok=True)
        shutil.copy(file, copies[-1])
    cache_dir = tmp_path / "cache"
    first = decode_all(copies, 32, 1, cache_dir=cache_dir).pixels
    key = cache_key(copies, 32, 1)
    stored = cache_dir / f"{key}.npy"
    mtime = stored.stat().st_mtime_ns
    again = decode_all(copies, 32, 1, cache_dir=cache_dir).pixels
    assert stored.stat().st_mtime_ns == mtime and np.array_equal(first, again)

    Image.new("L", (600, 600), color=255).save(copies[0], quality=95)  # the file changes
    assert cache_key(copies, 32, 1) != key
    changed = decode_all(copies, 32, 1, cache_dir=cache_dir).pixels
    assert changed[0].min() > 250 and not np.array_equal(changed[0], first[0])
    assert np.array_equal(changed[1:], first[1:])
    assert cache_key(copies, 64, 1) != cache_key(copies, 32, 1)  # and so does the image size


def test_draft_decoding_is_close_to_a_full_decode(tiny_root):
    file = sorted((tiny_root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    fast = read_image(file, 128).astype(np.float32)
    with Image.open(file) as image:
        full = np.asarray(image.convert("L").resize((128, 128), Image.Resampling.BILINEAR), dtype=np.float32)
    assert fast.shape == (1, 128, 128)
    assert np.abs(fast[0] - full).mean() < 4.0  # a few grey levels: same picture, cheaper decode


def test_pos_weight_balance_reaches_the_loss(tiny_root, tmp_path):
    dm = _datamodule(tiny_root, tmp_path, balance="pos_weight")
    dm.setup("fit")
    counts = dm.class_counts("train")
    assert dm.pos_weight == pytest.approx(counts["NORMAL"] / counts["PNEUMONIA"])
    weighted = PneumoniaClassifier(SeedCNN(64), optimizer=None, pos_weight=dm.pos_weight)
    plain = PneumoniaClassifier(SeedCNN(64), optimizer=None)
    logits, positives = torch.tensor([-1.0, 0.5]), torch.tensor([1.0, 1.0])
    # With only positive targets, pos_weight scales the loss exactly.
    assert weighted.loss(logits, positives) == pytest.approx(dm.pos_weight * plain.loss(logits, positives))
    assert _datamodule(tiny_root, tmp_path).pos_weight is None


def test_sampler_balance_draws_both_classes_equally(tiny_root, tmp_path):
    dm = _datamodule(tiny_root, tmp_path, balance="sampler")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.sampler.weights is not None
    drawn = Counter()
    for epoch in range(20):
        loader.sampler.set_epoch(epoch)
        for _, labels in loader:
            drawn.update(labels.tolist())
    share = drawn[0.0] / (drawn[0.0] + drawn[1.0])
    assert 0.4 < share < 0.6, share
    natural = dm.class_counts("train")["NORMAL"] / len(dm.labels["train"])
    assert natural < 0.4  # the data itself is imbalanced, so the sampler did the work
