"""Deprecated alias: the ``features`` command moved to :mod:`sam2_vitplug.cli.features` and its
work to :mod:`sam2_vitplug.feature_maps`."""

import warnings

from .cli.features import cmd_features, register  # noqa: F401
from .feature_maps import (auto_out_stride, available_bytes, input_size_for, pca_picture, pca_rgb,  # noqa: F401
                           save_features, save_png)
from .images import IMAGE_EXTS, collect_images  # noqa: F401

warnings.warn("sam2_vitplug.features_cli moved to sam2_vitplug.cli.features and sam2_vitplug.feature_maps",
              DeprecationWarning, stacklevel=2)
