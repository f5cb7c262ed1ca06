"""Deprecated: the ``fewshot`` command moved to :mod:`sam2_vitplug.cli.fewshot`.

Kept so old imports and ``torchrun ... -m sam2_vitplug.matching.cli run ...`` keep working;
use ``sam2-vitplug fewshot ...`` or ``torchrun ... -m sam2_vitplug.cli fewshot ...``.
This module is a deprecation alias, the only place in ``matching`` that imports the CLI.
"""

import sys
import warnings

from ..cli.fewshot import _build_sam2, cmd_eval, cmd_memory, cmd_run, register  # noqa: F401

if __name__ == "__main__":
    print("note: 'python -m sam2_vitplug.matching.cli' is deprecated; use 'sam2-vitplug fewshot' or "
          "'-m sam2_vitplug.cli fewshot'", file=sys.stderr)
    from ..cli import main

    sys.exit(main(["fewshot", *sys.argv[1:]]))
else:
    warnings.warn("sam2_vitplug.matching.cli moved to sam2_vitplug.cli.fewshot", DeprecationWarning, stacklevel=2)
