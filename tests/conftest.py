import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The add-on is not pip-installed (Blender loads it from its zip); its bpy-free modules are tested in place.
sys.path.insert(0, str(ROOT / "blender_addon"))


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def asd_home(tmp_path_factory):
    """A private ASD_HOME for the whole run: the tiny pipeline is built, saved and loaded from here."""
    import os

    home = tmp_path_factory.mktemp("asd_home")
    os.environ["ASD_HOME"] = str(home)
    return home


@pytest.fixture
def tiny_teacher(asd_home):
    """A fresh tiny teacher for each test (a discriminator adds a LoRA adapter to its UNet)."""
    from asd_backend.teachers import load_teacher

    return load_teacher("tiny", "cpu")
