"""Deprecated alias: the ``seg`` command moved to :mod:`sam2_vitplug.cli.seg` (the only place in
``heads`` that imports the CLI)."""

import warnings

from ..cli.seg import cmd_eval, cmd_predict, cmd_train, register  # noqa: F401

warnings.warn("sam2_vitplug.heads.cli moved to sam2_vitplug.cli.seg", DeprecationWarning, stacklevel=2)
