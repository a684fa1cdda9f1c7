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
