"""The review page as a user runs it: `python -m pneumo.app` in its own process, in an empty folder, with its
own temp folder ($TMPDIR) so that everything it writes can be seen; and a real headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, free_port

UPLOAD_LIMIT_MB = 0.5  # the test servers' max_upload_mb: the demo JPEGs (40-80 kB) pass, a 1 MB PNG does not


class ReviewServer:
    """`python -m pneumo.app model=... port=... max_upload_mb=0.5` started from `folder`/cwd with
    TMPDIR=`folder`/tmp; its output goes to `folder`/server.log."""

    def __init__(self, folder: Path, model: str, *overrides: str) -> None:
        self.cwd, self.tmp, self.log = folder / "cwd", folder / "tmp", folder / "server.log"
        self.cwd.mkdir(parents=True)
        self.tmp.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.argv = [sys.executable, "-m", "pneumo.app", f"model={model}", f"port={self.port}",
                     f"max_upload_mb={UPLOAD_LIMIT_MB}", *overrides]
        self.process: subprocess.Popen | None = None

    def start(self) -> ReviewServer:
        """Starts it and returns once the page answers (pytest-timeout bounds a server that never does)."""
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONPATH": str(PROJECT_ROOT), "PYTHONWARNINGS": "ignore"}
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # torch sets it in this process once imported: start as a shell does
        self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=self.log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            assert self.process.poll() is None, f"the page did not start:\n{self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)

    def post(self, name: str, body: bytes, chunked: bool = False) -> tuple[int, dict]:
        """POST one file as /api/review expects it; (HTTP status, JSON answer). `chunked`: no Content-Length,
        as a client streaming a file of unknown size sends it."""
        import http.client
        from urllib.parse import quote

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            path = f"/api/review?name={quote(name)}"
            headers = {"Content-Type": "application/octet-stream"}
            if chunked:
                chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
                connection.request("POST", path, body=chunks, headers=headers, encode_chunked=True)
            else:
                connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the page did not stop on SIGTERM:\n{self.log.read_text()[-2000:]}") from None

    def left_behind(self) -> list[str]:
        """Every file and folder under its cwd and TMPDIR, relative to them."""
        return sorted([f"cwd/{p.relative_to(self.cwd)}" for p in self.cwd.rglob("*")]
                      + [f"tmp/{p.relative_to(self.tmp)}" for p in self.tmp.rglob("*")])


def chromium_path() -> str:
    """The system Chromium (Debian's `chromium` package), or $PNEUMO_CHROMIUM; fails with the install line."""
    found = os.environ.get("PNEUMO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("the review page's browser tests need Chromium: apt-get install -y chromium fonts-liberation "
                    "(or set PNEUMO_CHROMIUM=/path/to/chrome)")
    return found


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Playwright, using the system browser (no `playwright install`)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the review page's browser tests need Playwright: pip install playwright==1.65.2")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
        yield chromium
        chromium.close()
