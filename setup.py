"""ditod: multimodal (image + OCR text) document layout detection for Detectron2.

detectron2 itself is not on PyPI and is therefore not listed here;
`make setup` (tools/setup_env.sh) installs it next to this package.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="ditod",
    version="0.1.0",
    description="LayoutLMv3 ViT-FPN backbone with OCR text fusion for Detectron2 layout detection",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ditod", "ditod.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "transformers>=5.0,<6",
        "tokenizers",
        "sentencepiece",
        "timm",
        "fvcore",
        "iopath",
        "yacs",
        "termcolor",
        "tabulate",
        "cloudpickle",
        "tqdm",
        "tensorboard",
        "omegaconf",
        "hydra-core",
        "pycocotools",
        "matplotlib",
        "Pillow",
        "numpy",
        "opencv-python-headless",
        "setuptools<81",  # detectron2 imports pkg_resources
        "rapidocr>=3",
        "onnxruntime",
        "pymupdf",
    ],
    extras_require={
        # ray: tests of tools/infer.py --ray on a local instance.
        # onnx: tests of the ONNX export.
        "dev": ["pytest", "pytest-timeout", "ruff==0.17.6", "ray[data]>=2.40", "onnx"],
        "export": ["onnx", "onnxruntime"],  # tools/export.py; ditod.runtime needs onnxruntime only
        "paddle": ["paddleocr"],
        "ray": ["ray[data]>=2.40"],  # tools/infer.py --ray: collections on a Ray cluster
    },
)
