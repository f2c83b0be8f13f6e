"""`python -m pneumo.app` answers a mistaken command line in one message, exit code 2, before torch is
imported and before anything listens or is written; a right one passes the same check."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pneumo.app.settings import CONFIG_NAME, register_config
from pneumo.command_line import command_line_problem
from tests.conftest import PROJECT_ROOT

HEAVY = ("torch", "lightning", "mlflow", "torchvision", "fastapi", "uvicorn")


def _problem(*argv: str) -> str | None:
    register_config()
    return command_line_problem(CONFIG_NAME, list(argv), config_dir=None)


@pytest.mark.parametrize("argv, expected", [
    ([], ["model=PATH", ".ckpt", "models:/NAME@ALIAS"]),
    (["model=/nonexistent/best.ckpt"], ["/nonexistent/best.ckpt does not exist", "Fix: pass model=PATH"]),
    (["model=models:/pneumo@"], ["not a model URI", "models:/NAME@ALIAS"]),
    (["model={ckpt}", "port=70000"], ["port=70000 is not allowed", "<= 65535", "Fix: port=8050"]),
    (["model={ckpt}", "port=abc"], ["port=abc is not allowed"]),
    (["model={ckpt}", "max_upload_mb=0"], ["max_upload_mb=0 is not allowed", "a number > 0"]),
    (["model={ckpt}", "host=my host"], ["host=my host is not allowed", "Fix: host=127.0.0.1"]),
    (["model={ckpt}", "max_upload=5"], ["unknown config key 'max_upload'", "max_upload_mb"]),
])
def test_a_mistake_is_one_message_with_the_fix_and_nothing_heavy_is_imported(tmp_path, argv, expected):
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"not read: the check only needs the file to exist")
    argv = [arg.format(ckpt=checkpoint) for arg in argv]
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['pneumo.app', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('pneumo.app', run_name='__main__', alter_sys=True)\n"
            "    code = 0\n"
            "except SystemExit as exit:\n"
            "    code = exit.code\n"
            f"print(json.dumps({{'code': code, 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})}}))\n")
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), "TMPDIR": str(tmp_path)})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, result.stderr[-2000:]
    assert report["heavy"] == [], report["heavy"][:20]
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    for words in expected:
        assert words in result.stderr, result.stderr
    assert list(work.iterdir()) == []  # no run folder, no log file


def test_what_is_right_passes(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    assert _problem(f"model={onnx}") is None
    assert _problem("model=models:/pneumo@champion", "host=0.0.0.0", "port=9000", "max_upload_mb=2.5") is None
    assert _problem("model=models:/pneumo/3", "display_size=512", "gradcam.target_layer=features.6") is None
    # train.py's own `model` is a config group, not a path: the app's rule must leave it alone
    assert command_line_problem("train", ["model=baseline"]) is None

