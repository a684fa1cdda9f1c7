"""`make addon`: the extension zip, its manifest, its bundled protocol and wheels."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("addon")
    cache = ROOT / "build" / "wheels"  # shared with `make addon`, so CI downloads the wheels once
    result = subprocess.run([sys.executable, str(ROOT / "blender_addon" / "build.py"), "--out", str(out),
                             "--wheels-cache", str(cache)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return next(out.glob("asd_studio-*.zip"))


def test_manifest(built_zip):
    with zipfile.ZipFile(built_zip) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
        names = set(zf.namelist())
    assert manifest["id"] == "asd_studio" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0"
    assert len(manifest["tagline"]) <= 64 and not manifest["tagline"].endswith(".")
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"network", "files"}
    assert set(manifest["platforms"]) == {"linux-x64", "windows-x64", "macos-arm64", "macos-x64"}
    wheels = [w.removeprefix("./") for w in manifest["wheels"]]
    assert all(w in names for w in wheels)
    for python in ("cp311-cp311", "cp312-abi3"):  # Python 3.11, and 3.13 through the stable ABI
        for platform in ("manylinux", "win_amd64", "macosx"):
            assert any(python in w and platform in w for w in wheels), (python, platform)
    assert built_zip.name == f"asd_studio-{manifest['version']}.zip"


def test_contents_and_bundled_protocol(built_zip, tmp_path):
    with zipfile.ZipFile(built_zip) as zf:
        names = set(zf.namelist())
        assert {"__init__.py", "connection.py", "scene.py", "session.py", "preferences.py", "operators.py",
                "panels.py", "asd_protocol/messages.py", "asd_protocol/client.py"} <= names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        zf.extractall(tmp_path / "asd_studio_zip")
    # The zip's own copy of the protocol is what the add-on imports (not the one installed here).
    sys.path.insert(0, str(tmp_path))
    try:
        protocol = importlib.import_module("asd_studio_zip.protocol")
        assert protocol.AsdClient.__module__ == "asd_studio_zip.asd_protocol.client"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("asd_studio_zip")]:
            del sys.modules[name]


def blender_extension_validator() -> Path:
    """Blender's own `blender --command extension validate`: bl_pkg's blender_ext.py, which the bpy
    module ships with its bundled scripts and which runs as a plain Python script."""
    spec = importlib.util.find_spec("bpy")
    assert spec is not None and spec.submodule_search_locations, "bpy is a test dependency"
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    assert found, "bpy no longer bundles bl_pkg's blender_ext.py"
    return found[-1]


def test_blenders_validator_accepts_the_extension(built_zip):
    result = subprocess.run([sys.executable, str(blender_extension_validator()), "validate", str(built_zip)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout + result.stderr


def test_blenders_validator_refuses_a_permission_text_over_64_characters(tmp_path):
    # The check the manifest once failed: the validator is the real one, and it does refuse.
    shutil.copytree(ROOT / "blender_addon" / "asd_studio", tmp_path / "asd_studio")
    manifest = tmp_path / "asd_studio" / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace(
        'network = "', 'network = "Talks to the ASD backend, on this machine or on a GPU server, over ZeroMQ; ', 1))
    result = subprocess.run([sys.executable, str(blender_extension_validator()), "validate",
                             str(tmp_path / "asd_studio")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "64 characters" in result.stdout + result.stderr
