"""The packages' front doors, as torchvision's: what a user imports comes from the package.

References are independent of the code under test: the names come from the
issue's list and from the import statements of the README's and the lessons'
code (parsed with ``ast``), and each is checked against the object its own
module defines.
"""

import ast
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minifpn
from minifpn import nn

ROOT = Path(__file__).resolve().parent.parent
#: The packages named as torch's / torchvision's: their names are imported from the package.
FRONT_DOORS = ("minifpn.functional", "minifpn.nn", "minifpn.ops", "minifpn.models")


def readme_and_lesson_code():
    """``(where, source)`` of every Python block of the README and code cell of the lessons."""
    readme = (ROOT / "README.md").read_text()
    for k, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S)):
        yield f"README.md block {k}", block
    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                source = "\n".join(line for line in source.splitlines()
                                   if not line.lstrip().startswith(("%", "!")))
                yield f"{path.name} cell {k}", source


def minifpn_imports():
    """``(where, module, name)`` for every ``from minifpn… import name``."""
    found = []
    for where, source in readme_and_lesson_code():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minifpn"):
                found += [(where, node.module, alias.name) for alias in node.names]
    return found


def test_the_readme_and_lessons_import_a_lot_from_minifpn():
    imports = minifpn_imports()
    assert len(imports) > 100
    assert {m for _, m, _ in imports} >= {"minifpn", "minifpn.models", "minifpn.ops"}


def test_every_name_the_readme_and_lessons_import_exists_and_uses_its_front_door():
    deep = []
    for where, module, name in minifpn_imports():
        source = importlib.import_module(module)
        value = getattr(source, name, None)
        if value is None:  # a submodule: `from minifpn import viz`
            value = importlib.import_module(f"{module}.{name}")
        door = next((d for d in FRONT_DOORS if module.startswith(d + ".")), None)
        if door is not None and getattr(importlib.import_module(door), name, None) is value:
            deep.append(f"{where}: from {module} import {name} — use `from {door} import {name}`")
    assert not deep, "\n".join(deep)


def test_the_issues_names_import_from_the_front_doors():
    from minifpn.models import (  # noqa: F401
        AnchorGenerator,
        FasterRCNN,
        FastRCNNConvFCHead,
        FastRCNNPredictor,
        GeneralizedRCNNTransform,
        MaskRCNN,
        MaskRCNNHeads,
        MaskRCNNPredictor,
        RegionProposalNetwork,
        RoIHeads,
        RPNHead,
        TwoMLPHead,
        detector_parts,
        fasterrcnn_resnet50_fpn,
        map_rois_to_levels,
        maskrcnn_resnet50_fpn,
        resnet_fpn_backbone,
    )
    from minifpn.ops import (
        MultiScaleRoIAlign,
        batched_nms,
        box_area,
        box_iou,
        clip_boxes_to_image,
        nms,
        remove_small_boxes,
        roi_align,
        roi_pool,
    )

    for function in (nms, batched_nms, box_iou, box_area, clip_boxes_to_image,
                     remove_small_boxes, roi_align, roi_pool, map_rois_to_levels):
        assert inspect.isfunction(function), function  # never a module of the same name
    assert MultiScaleRoIAlign is minifpn.models.MultiScaleRoIAlign
    assert minifpn.ops.roi_align is roi_align and minifpn.ops.roi_pool is roi_pool


def test_every_public_class_of_the_models_is_a_name_of_minifpn_models():
    import minifpn.models as models

    missing = []
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"minifpn.models.{info.name}")
        for name, value in vars(module).items():
            if (inspect.isclass(value) and value.__module__ == module.__name__
                    and not name.startswith("_") and name not in models.__all__):
                missing.append(f"minifpn.models.{info.name}.{name}")
    assert not missing
    assert all(hasattr(models, name) for name in models.__all__)
    assert issubclass(models.MaskRCNN, nn.Module)


def test_import_minifpn_brings_the_packages():
    # A fresh interpreter: nothing imported before `import minifpn`.
    code = ("import minifpn; import numpy as np;"
            "print(minifpn.models.MaskRCNN.__name__, minifpn.nn.Conv2d.__name__,"
            " minifpn.optim.SGD.__name__, minifpn.functional.relu.__name__,"
            " minifpn.ops.roi_align(np.ones((1, 1, 4, 4)), np.array([[0., 0, 0, 2, 2]]), 1).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out[:4] == ["MaskRCNN", "Conv2d", "SGD", "relu"]


@pytest.mark.parametrize("package", ["minifpn.ops", "minifpn.models"])
def test_front_door_docstrings_say_what_is_there(package):
    doc = importlib.import_module(package).__doc__
    assert "later" not in doc and "as they are built" not in doc
