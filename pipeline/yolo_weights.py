"""Ultralytics YOLO networks built by us, filled with the tensors of a weights file.

A YOLO ``.pt`` file pickles the whole network, and Ultralytics unpickles it fully (running whatever it brings).
Here the file is read by :func:`models.weights_file.read_module_file` (tensors only, nothing called), and the network
is built from one of Ultralytics' own architecture YAMLs (:data:`ARCHITECTURES`, shipped inside the installed
package), never from a configuration inside the file: the candidates whose first-layer width fits are built and the
one whose state dict has exactly the file's names and shapes takes the tensors. The number of classes and the
keypoint layout come from the head's tensor shapes; the class names are the file's ``names`` when they are plain
strings.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from models.weights_file import ModuleFile, UnsafeWeightsError, read_module_file

SCALES = "nsmlx"
ARCHITECTURES = {  # task: Ultralytics model YAML names, {s} the scale
    "detect": ("yolo11{s}.yaml", "yolov8{s}.yaml", "yolo26{s}.yaml"),
    "pose": ("yolo11{s}-pose.yaml", "yolov8{s}-pose.yaml", "yolo26{s}-pose.yaml"),
}
HEADS = {"detect": "ultralytics.nn.tasks.DetectionModel", "pose": "ultralytics.nn.tasks.PoseModel"}


def _head_index(tensors: dict) -> int:
    return max(int(m.group(1)) for k in tensors if (m := re.match(r"model\.(\d+)\.", k)))


def head_shape(tensors: dict, task: str, path: Path, what: str) -> tuple[int, tuple[int, int] | None]:
    """``(number of classes, keypoint shape or None)`` read off the head's last convolutions."""
    head = _head_index(tensors)
    cls = tensors.get(f"model.{head}.cv3.0.2.weight")
    if cls is None:
        raise UnsafeWeightsError(f"{what} weights {path}: no YOLO detection head found (model.{head}.cv3)")
    if task != "pose":
        return int(cls.shape[0]), None
    kpt = tensors.get(f"model.{head}.cv4.0.2.weight")
    if kpt is None:
        raise UnsafeWeightsError(f"{what} weights {path}: a pose model was expected, but the file has no keypoint head")
    channels = int(kpt.shape[0])
    return int(cls.shape[0]), (channels // 3, 3) if channels % 3 == 0 else (channels // 2, 2)


def _expected(arch: str) -> tuple[int, int, int]:
    """``(head layer index, width of layer 0, width of layer 1)`` that ``arch`` builds, read off its YAML."""
    import math

    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(arch)
    depth, width, max_channels = cfg["scales"][cfg["scale"]] if "scales" in cfg else (1.0, 1.0, 1024)
    layers = cfg["backbone"] + cfg["head"]
    widths = [math.ceil(min(layer[3][0], max_channels) * width / 8) * 8 for layer in layers[:2]]
    return len(layers) - 1, *widths


def _build(arch: str, task: str, nc: int, kpt_shape):
    from ultralytics.nn.tasks import DetectionModel, PoseModel, yaml_model_load

    cfg = yaml_model_load(arch)
    if task == "pose":
        return PoseModel(cfg, nc=nc, data_kpt_shape=kpt_shape, verbose=False)
    return DetectionModel(cfg, nc=nc, verbose=False)


def matching_network(module_file: ModuleFile, task: str, path: Path, what: str):
    """``(architecture name, network)`` of the trusted architecture whose state dict fits the file's tensors."""
    tensors = module_file.tensors
    nc, kpt_shape = head_shape(tensors, task, path, what)
    wanted = {k: tuple(v.shape) for k, v in tensors.items()}
    widths = [int(tensors[k].shape[0]) if k in tensors else -1 for k in ("model.0.conv.weight", "model.1.conv.weight")]
    found = (_head_index(tensors), *widths)
    tried = [template.format(s=scale) for template in ARCHITECTURES[task] for scale in SCALES]
    for arch in tried:
        if _expected(arch) != found:  # cheap: only architectures whose first layers fit are built
            continue
        net = _build(arch, task, nc, kpt_shape)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == wanted:
            return arch, net
    raise UnsafeWeightsError(
        f"{what} weights {path}: the network ({module_file.network}, {len(tensors)} tensors) matches none of the "
        f"architectures the project builds ({', '.join(tried)}); use YOLOv8, YOLO11 or YOLO26 weights"
    )


def class_names(module_file: ModuleFile, nc: int) -> dict[int, str]:
    names = module_file.attributes.get("names")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if isinstance(names, dict) and len(names) == nc and all(isinstance(v, str) for v in names.values()):
        try:
            return {int(k): v for k, v in names.items()}
        except (TypeError, ValueError):
            pass
    return {i: f"class{i}" for i in range(nc)}


def load_yolo_file(path: str | Path, task: str = "detect", what: str = "detector"):
    """An Ultralytics ``YOLO`` whose network we built and filled with the tensors of ``path``; ``.weights_path``
    names the file (for the export cache)."""
    import torch
    from ultralytics import YOLO

    logging.getLogger("ultralytics").setLevel(logging.WARNING)
    path = Path(path)
    module_file = read_module_file(path, what)
    if task == "pose" and module_file.network == HEADS["detect"]:
        raise UnsafeWeightsError(f"{what} weights {path} are a detector, not a pose model")
    arch, net = matching_network(module_file, task, path, what)
    with torch.no_grad():
        net.load_state_dict({k: v.float() for k, v in module_file.tensors.items()}, strict=True)
    net.names = class_names(module_file, int(net.model[-1].nc))
    model = YOLO(arch, task=task, verbose=False)
    net.args, net.task = model.model.args, model.model.task
    net.pt_path = str(path)  # where an export of it is written (Ultralytics' exporter names files after it)
    model.model = net.float().eval()
    model.weights_path = path
    return model
