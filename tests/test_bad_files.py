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

from pneumo.data import ChestXrayDataModule
from pneumo.images import BadImageError, decode_image
from pneumo.models import SeedCNN
from pneumo.module import PneumoniaClassifier


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **options)
    return buffer.getvalue()


# ---- one decoder, every format ----------------------------------------------------------------------
def test_sixteen_bit_png_is_scaled_by_the_bits_in_use(tmp_path):
    values = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # a 12-bit ramp
    Image.fromarray(values).save(tmp_path / "ramp.png")
    decoded = decode_image(tmp_path / "ramp.png", 64)[0]
    assert decoded[:, 0].max() == 0 and decoded[:, -1].min() == 255  # full range, not 1/16 of it
    assert abs(int(decoded[0, 32]) - round(values[0, 32] / 4095 * 255)) <= 3


def test_alpha_is_composited_onto_black(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (255, 255, 255, 255)   # opaque white left
    rgba[:, 32:] = (255, 255, 255, 0)     # transparent right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    decoded = decode_image(tmp_path / "alpha.png", 64)[0]
    assert decoded[:, :28].min() == 255 and decoded[:, 36:].max() == 0


def test_cmyk_jpeg_decodes_like_its_rgb_twin(tmp_path):
    gray = Image.linear_gradient("L").resize((600, 500))
    (tmp_path / "cmyk.jpeg").write_bytes(_jpeg_bytes(gray.convert("RGB").convert("CMYK")))
    (tmp_path / "rgb.jpeg").write_bytes(_jpeg_bytes(gray.convert("RGB")))
    cmyk, rgb = (decode_image(tmp_path / n, 64).astype(int) for n in ("cmyk.jpeg", "rgb.jpeg"))
    assert np.abs(cmyk - rgb).mean() < 6


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("L", (600, 400), 0)
    image.paste(255, (0, 0, 300, 400))  # bright left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "rotated.jpeg").write_bytes(_jpeg_bytes(image, exif=exif.tobytes()))
    decoded = decode_image(tmp_path / "rotated.jpeg", 64)[0].astype(int)
    assert decoded[:24].mean() > 200 and decoded[40:].mean() < 50  # displayed upright: bright top


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpeg", b"", "empty file"),
    ("noise.jpeg", bytes(random.Random(0).randbytes(5000)), "not an image"),
])
def test_unreadable_files_name_the_file_and_the_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImageError, match=reason) as error:
        decode_image(tmp_path / name, 64)
    assert str(tmp_path / name) in str(error.value)


def test_truncated_jpeg_and_decompression_bomb_are_bad_files(tmp_path):
    whole = _jpeg_bytes(Image.effect_noise((800, 800), 60))
    (tmp_path / "cut.jpeg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_image(tmp_path / "cut.jpeg", 64)
    Image.new("1", (20000, 10000)).save(tmp_path / "huge.png")  # 200 megapixels, a few KB on disk
    with pytest.raises(BadImageError, match="decompression-bomb"):
        decode_image(tmp_path / "huge.png", 64)


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
