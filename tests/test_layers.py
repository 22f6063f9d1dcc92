"""The package's layers: every import, at the top of a file or inside a function, points down.

ARCHITECTURE: "Lower layers never import higher ones (``functional`` knows
nothing of ``models``; ``models`` nothing of ``engine`` or ``cli``)". This
test reads every module's imports (with :mod:`ast`, nothing is imported) and
checks them against the layers below, so a hidden upward import — autograd
importing functional for its operators, say — fails here.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minifpn"

#: Each part of the package and its layer: a part may import its own layer's
#: parts or lower ones. The package itself (``minifpn/__init__.py``, what
#: ``import minifpn`` brings) sits with the models.
LAYERS = {
    "backend": 0, "recording": 0,
    "autograd": 1, "validation": 1,
    "functional": 2,
    "nn": 3, "serialization": 3, "gradcheck": 3,
    "optim": 4, "weights": 4,
    "ops": 5,
    "models": 6, "minifpn": 6,
    "data": 7, "viz": 7,
    "engine": 8,
    # tools: around the pipeline (the lessons' helpers); tools.trained trains with the engine.
    "tools": 9, "doctor": 9,
    "cli": 10, "__main__": 10,
}


def part_of(module: str) -> str:
    """``minifpn.engine.train`` → ``engine``; ``minifpn`` → ``minifpn``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "minifpn"


def imports_of(path: Path) -> list:
    """``(line, module)`` for every minifpn module a file imports, wherever the import is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "minifpn":  # from minifpn import nn, optim
                found += [(node.lineno, f"minifpn.{alias.name}") for alias in node.names]
            elif node.module.startswith("minifpn."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names
                      if alias.name.split(".")[0] == "minifpn"]
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {path.stem if path.parent == PACKAGE else path.parent.name
             for path in PACKAGE.rglob("*.py")}
    parts = {"minifpn" if part == "__init__" else part for part in parts}
    assert parts == set(LAYERS)


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        here = LAYERS[part_of(module)]
        for line, imported in imports_of(path):
            if LAYERS[part_of(imported)] > here:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not upward, "\n".join(upward)


def test_the_check_finds_an_upward_import(tmp_path):
    # the check itself can fail: autograd importing functional, as it once did
    source = tmp_path / "autograd.py"
    source.write_text("def to(x):\n    from minifpn.functional import to_device_dtype\n")
    (line, imported), = imports_of(source)
    assert (line, imported) == (2, "minifpn.functional")
    assert LAYERS[part_of(imported)] > LAYERS["autograd"]
