"""Package attributes imported on first use (PEP 562), as transformers' lazy modules do:
importing a package then costs nothing, and a path that needs no detectron2 (the ONNX
Runtime predictor, OCR, tokens) never imports it through a package's `__init__`."""

import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, list[str]]):
    """
    The module-level `__getattr__` and `__dir__` of `package`, whose public names live in
    its submodules: `exports` maps a submodule (relative name) to the names it gives.

        __getattr__, __dir__ = lazy_exports(__name__, {"config": ["add_vit_config"]})
    """
    owner = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{owner[name]}", package), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(vars(importlib.import_module(package))) | set(owner))

    return __getattr__, __dir__
