"""``python -m training_ext.train ...`` and ``python training_ext/train.py ...``: the same as
``sam2-vitplug train ...`` (flags and code in ``sam2_vitplug/cli/train.py``).

This file is an entry point, kept where upstream's users look for it (upstream runs
``python training/train.py``); the composing and launching live in ``compose.py`` and
``launch.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file (python training_ext/train.py): import as the package it is part of
    _HERE = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]  # no top-level 'compose', ...
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "training_ext"  # noqa: A001

from sam2_vitplug.cli.train import build_parser, encoder_type_choices, main, request_from_args  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
