"""Real folders hold stray files, broken downloads and odd formats: each ends in correct work or a clear message."""
from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from functools import partial
from PIL import Image

from pneumo.data.datamodule import ChestXrayDataModule
from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image
from pneumo.models.seed_cnn import SeedCNN
from pneumo.training.module import PneumoniaClassifier


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


# ---- one decoder, every format ----------------------------------------------------------------------
def test_sixteen_bit_png_is_scaled_by_the_bits_in_use(tmp_path):
    values = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # a 12-bit ramp
    Image.fromarray(values).save(tmp_path / "ramp.png")
    decoded = read_image(tmp_path / "ramp.png", 64)[0]
    assert decoded[:, 0].max() == 0 and decoded[:, -1].min() == 255  # full range, not 1/16 of it
    assert abs(int(decoded[0, 32]) - round(values[0, 32] / 4095 * 255)) <= 3


def test_alpha_is_composited_onto_black(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (255, 255, 255, 255)   # opaque white left
    rgba[:, 32:] = (255, 255, 255, 0)     # transparent right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    decoded = read_image(tmp_path / "alpha.png", 64)[0]
    assert decoded[:, :28].min() == 255 and decoded[:, 36:].max() == 0


def test_cmyk_jpeg_decodes_like_its_rgb_twin(tmp_path):
    gray = Image.linear_gradient("L").resize((600, 500))
    (tmp_path / "cmyk.jpeg").write_bytes(_jpeg_bytes(gray.convert("RGB").convert("CMYK")))
    (tmp_path / "rgb.jpeg").write_bytes(_jpeg_bytes(gray.convert("RGB")))
    cmyk, rgb = (read_image(tmp_path / n, 64).astype(int) for n in ("cmyk.jpeg", "rgb.jpeg"))
    assert np.abs(cmyk - rgb).mean() < 6


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("L", (600, 400), 0)
    image.paste(255, (0, 0, 300, 400))  # bright left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "rotated.jpeg").write_bytes(_jpeg_bytes(image, exif=exif.tobytes()))
    decoded = read_image(tmp_path / "rotated.jpeg", 64)[0].astype(int)
    assert decoded[:24].mean() > 200 and decoded[40:].mean() < 50  # displayed upright: bright top


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpeg", b"", "empty file"),
    ("noise.jpeg", bytes(random.Random(0).randbytes(5000)), "not an image"),
])
def test_unreadable_files_name_the_file_and_the_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as error:
        read_image(tmp_path / name, 64)
    assert str(tmp_path / name) in str(error.value)


def test_truncated_jpeg_and_decompression_bomb_are_bad_files(tmp_path):
    whole = _jpeg_bytes(Image.effect_noise((800, 800), 60))
    (tmp_path / "cut.jpeg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.jpeg", 64)
    Image.new("1", (20000, 10000)).save(tmp_path / "huge.png")  # 200 megapixels, a few KB on disk
    with pytest.raises(BadImageError, match="decompression-bomb"):
        read_image(tmp_path / "huge.png", 64)


# ---- folders --------------------------------------------------------------------------------------
def _copy(tiny_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "chest_xray"
    shutil.copytree(tiny_root, root)
    return root


def _dm(root: Path, tmp_path: Path, **options) -> ChestXrayDataModule:
    return ChestXrayDataModule(str(root), image_size=64, batch_size=16, num_workers=0, cache="memory",
                               output_dir=str(tmp_path / "out"), **options)


def test_lower_case_class_folder_is_the_same_class(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    (root / "train" / "NORMAL").rename(root / "train" / "normal")
    dm = _dm(root, tmp_path)
    dm.setup("fit")
    normals = [f for f, y in zip(dm.files["train"], dm.labels["train"]) if "/normal/" in f]
    assert normals and all(y == 0 for f, y in zip(dm.files["train"], dm.labels["train"]) if "/normal/" in f)


def test_an_empty_class_folder_is_named(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    shutil.rmtree(root / "test" / "NORMAL")
    (root / "test" / "NORMAL").mkdir()
    with pytest.raises(FileNotFoundError, match=str(root / "test")):
        _dm(root, tmp_path).setup("test")


def test_both_cases_of_one_class_are_refused(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    shutil.copytree(root / "test" / "NORMAL", root / "test" / "normal")
    with pytest.raises(ValueError, match="the same class twice"):
        _dm(root, tmp_path).setup("test")


def _add_faults(folder: Path) -> dict[str, str]:
    """Bad and stray files next to good ones; returns name -> kind."""
    good = next(folder.glob("*.jpeg")).read_bytes()
    faults = {"zero.jpeg": b"", "cut.jpeg": good[: len(good) // 3], "random.jpeg": b"\x00\xff" * 999,
              ".DS_Store": b"\x00\x00\x00\x01Bud1", "Thumbs.db": b"\xd0\xcf\x11\xe0", "notes.txt": b"to do"}
    for name, content in faults.items():
        (folder / name).write_bytes(content)
    return faults


def test_skip_policy_leaves_bad_files_out_and_lists_each_once(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    _add_faults(root / "train" / "PNEUMONIA")
    dm = _dm(root, tmp_path)
    with pytest.warns(UserWarning, match="skipped 6 file") as caught:
        dm.setup("fit")
    message = str(caught[0].message)
    for name in ("zero.jpeg", "cut.jpeg", "random.jpeg", ".DS_Store", "Thumbs.db", "notes.txt"):
        assert message.count(name) == 1
    used = set(dm.files["train"]) | set(dm.files["val"])
    assert not any(Path(f).name in ("zero.jpeg", "cut.jpeg", "random.jpeg") for f in used)
    assert len(used) == 80
    text = dm.skipped_files_text()
    assert "empty file" in text and "not an image file (ignored)" in text and len(text.splitlines()) == 6


def test_error_policy_fails_before_training_listing_every_bad_file(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    _add_faults(root / "train" / "NORMAL")
    with pytest.raises(ValueError) as error:
        _dm(root, tmp_path, on_bad_file="error").setup("fit")
    message = str(error.value)
    assert "3 file(s) cannot be read" in message and "data.on_bad_file=skip" in message
    for name in ("zero.jpeg", "cut.jpeg", "random.jpeg"):
        assert name in message
    assert "notes.txt" not in message  # stray non-image files are ignored, not errors


def test_fuzz_folder_trains_on_exactly_the_valid_images(tmp_path):
    """200 random broken or odd files among valid images; one short epoch sees exactly the valid ones."""
    rng = random.Random(7)
    root = tmp_path / "fuzz"
    valid: set[str] = set()
    for split in ("train", "test"):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(12):
                name = f"IM-{label}{i:03d}-0001.jpeg" if label == 0 else f"person{i}_virus_{i}.jpeg"
                Image.effect_noise((200 + 7 * i, 180), 40 + 80 * label).save(folder / name)
                valid.add(str(folder / name))
    good_jpeg = _jpeg_bytes(Image.effect_noise((300, 300), 50))
    makers = [
        lambda: ("jpeg", b""),
        lambda: ("jpeg", good_jpeg[: rng.randrange(10, len(good_jpeg) - 10)]),
        lambda: (rng.choice(["jpeg", "jpg", "png"]), rng.randbytes(rng.randrange(1, 3000))),
        lambda: (rng.choice(["txt", "db", "", "DS_Store", "json"]), rng.randbytes(50)),
    ]
    odd_valid = [("png", "RGBA"), ("png", "I;16"), ("jpeg", "CMYK"), ("png", "LA"), ("jpeg", "L")]
    for n in range(200):
        folder = root / "train" / rng.choice(["NORMAL", "PNEUMONIA"])
        if n % 10 == 0:  # some odd but valid images
            suffix, mode = odd_valid[(n // 10) % len(odd_valid)]
            image = Image.effect_noise((90, 70), 50).convert("RGBA" if mode in ("RGBA", "LA") else "L")
            image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 16) if mode == "I;16" \
                else image.convert(mode)
            path = folder / f"odd{n}.{suffix}"
            image.save(path)
            valid.add(str(path))
            continue
        suffix, content = rng.choice(makers)()
        (folder / (f"junk{n}.{suffix}" if suffix else f"junk{n}")).write_bytes(content)

    dm = ChestXrayDataModule(str(root), image_size=32, batch_size=8, num_workers=0, cache="memory",
                             output_dir=str(tmp_path / "out"))
    with pytest.warns(UserWarning, match="skipped"):
        dm.setup("fit")
    train_valid = {v for v in valid if "/train/" in v}
    assert set(dm.files["train"]) | set(dm.files["val"]) == train_valid
    assert not set(dm.files["train"]) & set(dm.files["val"])

    seen = []

    class CountImages(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(len(batch[1]))

    module = PneumoniaClassifier(SeedCNN(32), optimizer=partial(torch.optim.Adam, lr=1e-3))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[CountImages()])
    trainer.fit(module, datamodule=dm)
    assert sum(seen) == len(dm.files["train"])


def test_training_logs_the_skipped_files_to_mlflow(tiny_root, tmp_path):
    from mlflow import MlflowClient

    from tests.conftest import isolated_overrides, run_entry_point

    root = _copy(tiny_root, tmp_path)
    _add_faults(root / "train" / "NORMAL")
    result = run_entry_point("train.py", f"data.root={root}", "data.image_size=64", "trainer.max_epochs=1",
                             "mlflow_model=false", *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    assert run.data.params["data.n_skipped_files"] == "6"
    text = Path(client.download_artifacts(run.info.run_id, "data/skipped_files.txt", str(tmp_path))).read_text()
    assert "zero.jpeg\tempty file (0 bytes)" in text and len(text.splitlines()) == 6


# ---- operating-system metadata ----------------------------------------------------------------------
# The head of a real AppleDouble file (a Mac's `._name` beside `name` on a non-Mac disk): magic 0x00051607,
# version 2, the "Mac OS X" filler, two entries (Finder info, resource fork), zero-padded to 4 KB.
APPLE_DOUBLE = (b"\x00\x05\x16\x07" + b"\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00\x02"
                + b"\x00\x00\x00\x09\x00\x00\x00\x32\x00\x00\x0e\xb0"
                + b"\x00\x00\x00\x02\x00\x00\x0e\xe2\x00\x00\x01\x1e").ljust(4096, b"\x00")


def _add_mac_and_windows_metadata(root: Path) -> set[str]:
    """What a Kaggle folder copied from a Mac (and once opened on Windows) holds beside its images."""
    added = []
    for image in sorted(root.rglob("*.jpeg")):
        added.append(image.with_name(f"._{image.name}"))
        added[-1].write_bytes(APPLE_DOUBLE)
    for folder in (root / "train", root / "train" / "NORMAL", root / "test" / "PNEUMONIA"):
        added.append(folder / ".DS_Store")
        added[-1].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2000))
    added += [root / "train" / "._NORMAL", root / "test" / "PNEUMONIA" / "Thumbs.db",
              root / "test" / "PNEUMONIA" / "desktop.ini"]
    for path in added[-3:]:
        path.write_bytes(APPLE_DOUBLE if path.name.startswith("._") else b"[.ShellClassInfo]\r\n")
    archive = root / "train" / "__MACOSX" / "NORMAL"  # a zip made on a Mac, unpacked into the split
    archive.mkdir(parents=True)
    hidden = root / "train" / "NORMAL" / ".thumbnails"  # a hidden folder, even holding a real JPEG
    hidden.mkdir()
    for folder in (archive, hidden):
        added.append(folder / "._IM-0001-0001.jpeg")
        added[-1].write_bytes(APPLE_DOUBLE)
    added.append(hidden / "IM-9999-0001.jpeg")
    shutil.copy(next((root / "train" / "NORMAL").glob("IM-*.jpeg")), added[-1])
    return {str(path) for path in added}


def test_mac_metadata_is_ignored_and_listed_under_the_error_policy(tiny_root, tmp_path):
    """A Kaggle folder copied from a Mac, through the data module train.py builds, with on_bad_file=error."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pneumo.config import CONFIG_DIR

    root = _copy(tiny_root, tmp_path)
    images = {str(p) for p in root.rglob("*.jpeg")}
    added = _add_mac_and_windows_metadata(root)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={root}", "data.on_bad_file=error", "data.image_size=32",
                                          "data.cache=memory", f"output_dir={tmp_path}/out", f"cache_dir={tmp_path}/c"])
    dm = instantiate(cfg.data)
    with pytest.warns(UserWarning, match=r"skipped \d+ file[\s\S]*more ignored file\(s\), all listed in skipped"):
        dm.setup("fit")  # no error: metadata is not a bad file
    with pytest.warns(UserWarning, match=r"AppleDouble"):
        dm.setup("test")
    used = set(dm.files["train"]) | set(dm.files["val"]) | set(dm.files["test"])
    assert used == {image for image in images if "/val/" not in image}
    listed = [line.split("\t") for line in dm.skipped_files_text().splitlines()]
    assert sorted(path for _, path, _ in listed) == sorted(p for p in added if "/val/" not in p)
    assert all(reason.endswith("(ignored)") for _, _, reason in listed)
    reasons = {Path(path).name: reason for _, path, reason in listed}
    assert "AppleDouble" in reasons["._NORMAL"] and "macOS folder metadata" in reasons[".DS_Store"]
    assert "Windows" in reasons["Thumbs.db"] and "Windows" in reasons["desktop.ini"]
    assert "hidden folder" in reasons["IM-9999-0001.jpeg"]
    assert dm.describe()["ignored_files"] == len(listed) and dm.describe()["unreadable_files"] == 0


def test_a_real_bad_file_still_stops_the_error_policy_beside_ignored_metadata(tiny_root, tmp_path):
    root = _copy(tiny_root, tmp_path)
    _add_mac_and_windows_metadata(root)
    (root / "train" / "PNEUMONIA" / "broken.jpeg").write_bytes(APPLE_DOUBLE)  # same bytes, but not metadata
    with pytest.raises(ValueError) as error:
        _dm(root, tmp_path, on_bad_file="error").setup("fit")
    message = str(error.value)
    assert "1 file(s) cannot be read" in message and "broken.jpeg" in message and "._" not in message


@pytest.mark.slow  # a real training run, ~50 s on 2 cores
def test_training_with_the_error_policy_ignores_apple_double_files(tiny_root, tmp_path):
    from mlflow import MlflowClient

    from tests.conftest import isolated_overrides, run_entry_point

    root = _copy(tiny_root, tmp_path)
    added = _add_mac_and_windows_metadata(root)
    result = run_entry_point("train.py", f"data.root={root}", "data.on_bad_file=error", "data.image_size=64",
                             "trainer.max_epochs=1", "mlflow_model=false", *isolated_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("pneumo").experiment_id])
    # Training reads train (val is carved out of it) and, for its leak check, test; never the val/ folder.
    read = [path for path in added if "/train/" in path or "/test/" in path]
    assert run.data.params["data.n_skipped_files"] == str(len(read))
    text = Path(client.download_artifacts(run.info.run_id, "data/skipped_files.txt", str(tmp_path))).read_text()
    assert sorted(line.split("\t")[1] for line in text.splitlines()) == sorted(read)
    assert all(line.endswith("(ignored)") for line in text.splitlines())


def test_predict_folder_listing_leaves_metadata_out_and_lists_it(tiny_root, tmp_path):
    from pneumo.data.datasets import find_images, list_images

    folder = tmp_path / "unlabelled"
    shutil.copytree(tiny_root / "test" / "PNEUMONIA", folder / "ward_a")
    images = sorted(str(p) for p in folder.rglob("*.jpeg"))
    added = {str(path) for path in _add_mac_and_windows_metadata_flat(folder / "ward_a")}
    (folder / "notes.txt").write_text("scanned 2024-01")
    with pytest.warns(UserWarning, match=r"left out \d+ file") as caught:
        assert list_images(folder) == images
    assert "._" in str(caught[0].message)
    files, skipped = find_images(folder)
    assert files == images and {entry["path"] for entry in skipped} == added | {str(folder / "notes.txt")}
    assert all(entry["reason"].endswith("(ignored)") for entry in skipped)
    only_metadata = tmp_path / "only_metadata"
    only_metadata.mkdir()
    (only_metadata / "._IM-0001-0001.jpeg").write_bytes(APPLE_DOUBLE)
    with pytest.raises(FileNotFoundError, match=r"holds no .* images \(only 1 ignored file"):
        list_images(only_metadata)


def _add_mac_and_windows_metadata_flat(folder: Path) -> list[Path]:
    """AppleDouble files beside every image of one folder, a .DS_Store and a __MACOSX folder."""
    added = []
    for image in sorted(folder.glob("*.jpeg")):
        added.append(image.with_name(f"._{image.name}"))
        added[-1].write_bytes(APPLE_DOUBLE)
    added.append(folder / ".DS_Store")
    added[-1].write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "__MACOSX").mkdir()
    added.append(folder / "__MACOSX" / "._scan.jpeg")
    added[-1].write_bytes(APPLE_DOUBLE)
    return added


def test_metadata_is_judged_below_the_data_folder_only(tmp_path):
    from pneumo.data.os_metadata import metadata_reason

    data = tmp_path / ".cache" / "synthetic" / "train" / "NORMAL"  # the demo set lives under a hidden folder
    assert metadata_reason(data / "IM-0001-0001.jpeg", tmp_path / ".cache" / "synthetic") is None
    assert "AppleDouble" in metadata_reason(data / "._IM-0001-0001.jpeg", tmp_path / ".cache" / "synthetic")
    assert metadata_reason(data / "DESKTOP.INI", data).endswith("(ignored)")
    assert metadata_reason(data / "thumbs_up.jpeg", data) is None
