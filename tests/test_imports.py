"""The import graph of ditod: one way (data never imports modeling or engine), no cycle,
every module importable on its own, the packages' lazy names all there, and the
inference path without detectron2."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = Path(REPO) / "ditod"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name, path):
    """The ditod modules that module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import submodule` imports the submodule too.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES)
    found.discard(name)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_the_graph_sees_the_imports():
    # Guards the parser itself: these edges exist (a relative, a nested-package relative
    # and a package import).
    assert "ditod.data.reading_order" in GRAPH["ditod.data.tokens"]
    assert "ditod.layoutlmv3" in GRAPH["ditod.modeling.backbone"]
    assert "ditod.data" in GRAPH["ditod.config"]


def test_data_imports_neither_modeling_nor_engine():
    wrong = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.startswith("ditod.data")
        for target in targets
        if target.startswith(("ditod.modeling", "ditod.engine"))
    }
    assert not wrong


def test_no_import_cycle():
    cycles, state = [], {}

    def visit(name, stack):
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles


# Imports each module in a fresh state of ditod (its modules forgotten, its entries in
# detectron2's registries removed) within one interpreter: torch and detectron2 load once.
IMPORT_ALONE = """
import gc, importlib, sys
import detectron2.data, detectron2.evaluation, detectron2.modeling
from detectron2.utils.registry import Registry

registries = [o for o in gc.get_objects() if isinstance(o, Registry)]
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m == "ditod" or m.startswith("ditod.")]:
        del sys.modules[module]
    for registry in registries:
        for key, obj in list(registry._obj_map.items()):
            if getattr(obj, "__module__", "").startswith("ditod"):
                del registry._obj_map[key]
    importlib.import_module(name)
"""


def test_every_module_imports_alone():
    names = sorted(MODULES)
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALONE, *names], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_lazy_package_names_resolve():
    import ditod
    import ditod.data
    import ditod.engine

    for package in (ditod, ditod.data, ditod.engine):
        assert package.__all__ and set(package.__all__) <= set(dir(package))
        for name in package.__all__:
            assert getattr(package, name).__module__.startswith(package.__name__), name
    with pytest.raises(AttributeError, match="'ditod.data' has no attribute 'nothing'"):
        ditod.data.nothing  # noqa: B018


# What the ONNX Runtime predictor and its OCR, tokens and blocks need: none imports detectron2.
WITHOUT_DETECTRON2 = [
    "ditod",
    "ditod.data",
    "ditod.data.ocr",
    "ditod.data.reading_order",
    "ditod.data.tokens",
    "ditod.engine",
    "ditod.engine.blocks",
    "ditod.engine.prediction",
    "ditod.layoutlmv3",
    "ditod.runtime",
]


def test_the_inference_path_imports_no_detectron2():
    code = (
        "import importlib, sys\n"
        f"for name in {WITHOUT_DETECTRON2!r}: importlib.import_module(name)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'detectron2'], 'detectron2 imported'\n"
        "from ditod import load_config\n"
        "assert 'detectron2' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
