"""Run inside Blender: ``blender -b --factory-startup --python tests/blender_bvh_positions.py -- in.bvh out.json``.

Imports the BVH with Blender's own importer (Y up, as we write it) and writes the world position of every bone's head
for every frame, converted back to the file's axes (x, y up, z), as JSON ``{"names": [...], "positions": [...]}``.
"""

import builtins
import json
import sys

import bpy
from io_anim_bvh import import_bvh

# Debian's Blender 3.4 runs on Python 3.11, where its importer's open(path, "rU") fails: drop the obsolete "U"
import_bvh.open = lambda path, mode="r", *args, **kwargs: builtins.open(path, mode.replace("U", ""), *args, **kwargs)

source, target = sys.argv[sys.argv.index("--") + 1 :][:2]
bpy.ops.import_anim.bvh(filepath=source, axis_forward="-Z", axis_up="Y", global_scale=1.0, frame_start=1,
                        use_fps_scale=False, rotate_mode="NATIVE")  # fmt: skip
armature = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
action = armature.animation_data.action
first, last = (int(round(v)) for v in action.frame_range)
names = [bone.name for bone in armature.pose.bones]
frames = []
for frame in range(first, last + 1):
    bpy.context.scene.frame_set(frame)
    heads = [armature.matrix_world @ bone.head for bone in armature.pose.bones]
    frames.append([[h.x, h.z, -h.y] for h in heads])  # Blender is z up, y forward: back to the BVH's y up
with open(target, "w") as handle:
    json.dump({"names": names, "positions": frames}, handle)
