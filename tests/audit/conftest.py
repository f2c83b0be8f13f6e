"""The planted demo set, written once per session for the audit tests."""
from __future__ import annotations

import pytest

from tests.audit.planted import Planted, plant


@pytest.fixture(scope="session")
def planted(tiny_root, tmp_path_factory) -> Planted:
    return plant(tiny_root, tmp_path_factory.mktemp("planted") / "chest_xray")
