"""Deprecated alias: ``python -m training_ext.export_cli CKPT --out OUT`` is ``sam2-vitplug export
CKPT --out OUT`` (the command lives in :mod:`sam2_vitplug.cli.export`)."""

import sys

from sam2_vitplug.cli.export import register, run  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """``sam2-vitplug export ...`` under its old name."""
    from sam2_vitplug.cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
