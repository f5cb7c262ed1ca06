"""Deprecated alias: the ``app`` command moved to :mod:`sam2_vitplug.cli.app`."""

import warnings

from ..cli.app import cmd_app, register  # noqa: F401

warnings.warn("sam2_vitplug.app.cli moved to sam2_vitplug.cli.app", DeprecationWarning, stacklevel=2)
