"""Build the installable Blender extension zip (`make addon`).

The zip holds the add-on, a copy of the wire protocol package (shared/asd_protocol) and pyzmq
wheels for every platform Blender runs on, for Python 3.11 (Blender 4.2-5.0) and 3.13 (the abi3
wheels): Blender installs the matching wheel. Wheels are downloaded at build time, never committed.

    python blender_addon/build.py [--out build/] [--wheels-cache build/wheels]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon" / "asd_studio"
PROTOCOL = ROOT / "shared" / "asd_protocol"

# (python version for pip, platform tags pip may match) per Blender platform and Python.
WHEEL_TARGETS = [
    (py, platforms)
    for py in ("3.11", "3.13")
    for platforms in (
        ["manylinux_2_28_x86_64", "manylinux_2_26_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
        ["win_amd64"],
        ["macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"],
        ["macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2"],
    )
]


def download_wheels(cache: Path, package: str = "pyzmq") -> list[Path]:
    """pip download the package's binary wheels for every target (skips targets already cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    pinned = f"{package}=={version(package)}"
    for py, platforms in WHEEL_TARGETS:
        args = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--python-version", py, "--implementation", "cp", "--dest", str(cache), pinned]
        for tag in platforms:
            args += ["--platform", tag]
        subprocess.run(args, check=True)
    return sorted(cache.glob(f"{package}-{version(package)}-*.whl"))


def manifest_with_wheels(wheels: list[Path]) -> str:
    text = (ADDON / "blender_manifest.toml").read_text()
    listing = ",\n".join(f'    "./wheels/{w.name}"' for w in wheels)
    text = text.replace("\n[permissions]", f"\nwheels = [\n{listing},\n]\n\n[permissions]", 1)
    tomllib.loads(text)  # still valid TOML
    return text


def build(out_dir: Path, wheels_cache: Path) -> Path:
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    wheels = download_wheels(wheels_cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("blender_manifest.toml", manifest_with_wheels(wheels))
        for path in sorted(ADDON.rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(ADDON).as_posix())
        for path in sorted(PROTOCOL.rglob("*.py")):
            if "__pycache__" not in path.parts:
                zf.write(path, ("asd_protocol" / path.relative_to(PROTOCOL)).as_posix())
        for wheel in wheels:
            zf.write(wheel, f"wheels/{wheel.name}")
    tmp.replace(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    parser.add_argument("--wheels-cache", type=Path, default=ROOT / "build" / "wheels")
    args = parser.parse_args()
    target = build(args.out, args.wheels_cache)
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB): install it in Blender with "
          "Edit ▸ Preferences ▸ Get Extensions ▸ Install from Disk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
