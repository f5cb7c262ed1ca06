"""The one install manifest of sam2-vitplug (see docs/architecture.md section 1).

``configs/`` lives at the top level of the repository but installs as the regular package
``sam2_vitplug.configs`` so Hydra can resolve ``pkg://sam2_vitplug.configs`` in both
regular and editable installs. ``hydra_plugins`` is a namespace package (no ``__init__.py``).
"""

import re
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "sam2_vitplug" / "version.py").read_text()).group(1)

config_packages = [
    ".".join(("sam2_vitplug", *init.parent.relative_to(ROOT).parts))
    for init in sorted((ROOT / "configs").rglob("__init__.py"))
]

setup(
    name="sam2-vitplug",
    version=VERSION,
    description="Self-supervised ViT trunks (DINOv2, DINOv3, I-JEPA) for SAM 2, as a plugin",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sam2_vitplug", "sam2_vitplug.*", "training_ext", "training_ext.*"])
    + config_packages
    + find_namespace_packages(include=["hydra_plugins", "hydra_plugins.*"]),
    package_dir={"sam2_vitplug.configs": "configs"},
    package_data={"sam2_vitplug.configs": ["**/*.yaml"], "": ["*.yaml"],
                  "sam2_vitplug": ["assets/*/*.safetensors", "assets/*/*.json", "assets/*/*.md"],
                  "sam2_vitplug.app": ["static/*.html", "static/*.js", "static/*.css"]},  # the app's page
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "torchvision",
        "sam2==1.1.0",
        "transformers>=5.0",
        "safetensors",
        "hydra-core>=1.3.2",
        "omegaconf",
        "huggingface_hub",
        "tqdm",
        "numpy",
        "pillow",  # overlays and image I/O
        "matplotlib",  # training-curve plots (Agg canvas, no display)
        "pycocotools",  # few-shot: RLE masks and COCOeval
        "scipy",  # segmentation heads: Hungarian matching
    ],
    extras_require={
        # Meta's reference `dinov2` (tests compare our .pth conversion against it) pins torch 2.0;
        # the Makefile installs it with --no-deps.
        # selenium drives Debian's headless chromium in tests/test_app.py (the Makefile installs it)
        "dev": ["pytest>=8", "pytest-timeout", "selenium>=4.10"],
        "train": [
            "submitit",
            "fvcore",
            "tensordict",
            "tensorboard",
            "pandas",
            "scikit-image",
            "opencv-python-headless",
            "pycocotools",
        ],
    },
    entry_points={
        "console_scripts": ["sam2-vitplug = sam2_vitplug.cli:main"],
        "sam2_vitplug.encoders": [
            "dino = sam2_vitplug.encoders.families:DINOV2",
            "dinov3 = sam2_vitplug.encoders.families:DINOV3",
            "ijepa = sam2_vitplug.encoders.families:IJEPA",
            "vit = sam2_vitplug.encoders.families:GENERIC_VIT",
            "hiera = sam2_vitplug.encoders.families:HIERA",
        ],
    },
)
