"""The review page's server over plain HTTP, as any client sees it: a real `python -m pneumo.app` on the
`trained_run` checkpoint, real image files. The probability is the project's own pipeline's (read_image at
the model's size, TrainedModel.probabilities); bad files get read_image's reason; the upload limit holds
whether or not the client declares the size; it listens on loopback only and leaves nothing behind.
The last test stops the server: keep it last."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo.data.image_formats import BadImageError
from pneumo.data.readers import read_image
from tests.app.conftest import UPLOAD_LIMIT_MB, ReviewServer

LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
LISTEN = "0A"


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    page = ReviewServer(tmp_path_factory.mktemp("review_server"), str(trained_run.best)).start()
    yield page
    page.stop()


def _reason(path: Path) -> str:
    """What training reports for this file (the reason of read_image's BadImageError)."""
    with pytest.raises(BadImageError) as error:
        read_image(path, 64)
    return error.value.reason


def test_an_image_gets_the_pipelines_probability_and_the_checkpoints_decision(server, trained_run, tiny_root):
    from pneumo.evaluation.trained import load_trained

    image = min((tiny_root / "test" / "PNEUMONIA").glob("*.jpeg"))
    status, answer = server.post(image.name, image.read_bytes())
    assert status == 200 and answer["ok"], answer
    trained = load_trained(trained_run.best)
    expected = float(trained.probabilities(read_image(image, trained.image_size, trained.channels)[None])[0])
    assert answer["probability_text"] == f"{expected:.6f}"
    assert answer["threshold"] == pytest.approx(trained.threshold["value"])
    assert answer["decision"] == ("PNEUMONIA" if expected >= trained.threshold["value"] else "NORMAL")
    assert answer["decoded"].startswith("data:image/png;base64,")
    assert answer["gradcam"].startswith("data:image/png;base64,")  # a checkpoint: Grad-CAM is there


def test_files_that_are_not_images_get_trainings_reason_and_the_page_goes_on(server, tiny_root, tmp_path):
    jpeg = min((tiny_root / "test" / "NORMAL").glob("*.jpeg"))
    notes, empty, cut = tmp_path / "notes.txt", tmp_path / "scan.dcm", tmp_path / "cut.jpeg"
    notes.write_text("findings: none\n")
    empty.write_bytes(b"")
    cut.write_bytes(jpeg.read_bytes()[:600])
    for bad in (notes, empty, cut):
        status, answer = server.post(bad.name, bad.read_bytes())
        assert status == 422 and answer == {"file": bad.name, "ok": False, "reason": _reason(bad)}
    status, answer = server.post(jpeg.name, jpeg.read_bytes())
    assert status == 200 and answer["ok"]


def test_an_upload_over_the_limit_is_refused_declared_or_streamed(server, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000), dtype=np.uint8)  # incompressible: ~1 MB
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > UPLOAD_LIMIT_MB * 1e6
    for chunked in (False, True):
        status, answer = server.post(big.name, big.read_bytes(), chunked=chunked)
        assert status == 413 and not answer["ok"], answer
        assert f"max_upload_mb={UPLOAD_LIMIT_MB:g}" in answer["reason"] and "refused" in answer["reason"]
    small = tmp_path / "small.png"
    Image.fromarray(noise[:200, :200]).save(small)  # the same kind of file under the limit is read
    status, answer = server.post(small.name, small.read_bytes(), chunked=True)
    assert status == 200 and answer["ok"]


def test_it_listens_on_loopback_only(server):
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            pytest.skip("reads the Linux socket table")
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == LISTEN and int(port, 16) == server.port:
                listening.append(address)
    assert listening == [LOOPBACK_HEX]


def test_nothing_is_left_behind_while_serving_or_after_sigterm(server):
    """Runs last: it stops the server."""
    [workspace] = [p for p in server.tmp.iterdir()]
    assert workspace.name.startswith("pneumo-app-")
    assert [p.name for p in workspace.iterdir()] == ["torchinductor"]  # no upload kept after its answer
    assert server.left_behind() == [f"tmp/{workspace.name}", f"tmp/{workspace.name}/torchinductor"]
    assert server.stop() == 0
    assert server.left_behind() == []
