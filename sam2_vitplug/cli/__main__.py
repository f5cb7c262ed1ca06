"""``python -m sam2_vitplug.cli ...`` (and ``torchrun ... -m sam2_vitplug.cli fewshot run ...``):
the same as ``sam2-vitplug ...``."""

import sys

from . import main

sys.exit(main())
