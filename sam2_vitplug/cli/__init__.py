"""sam2-vitplug: Hugging Face ViTs (DINOv2, DINOv3, I-JEPA, ...) as SAM 2's image encoder, with
few-shot segmentation, high-resolution features, segmentation heads on frozen ViTs and
upstream's trainer. Run `sam2-vitplug COMMAND --help` for a command's flags."""

from __future__ import annotations

import logging
import sys
from importlib import import_module, metadata
from typing import Sequence

from ..devices import default_device, parse_device  # noqa: F401 - kept importable from here (tools, old scripts)
from ..errors import one_line, user_error
from .formatting import HelpFormatter, HelpParser  # noqa: F401 - the shared help style

logger = logging.getLogger(__name__)

# The one place commands are registered. Each module defines
# ``register(subparsers: argparse._SubParsersAction) -> None``, which adds its parser and sets
# ``func`` (parsed arguments -> exit code). Built-in commands are listed here; another package
# adds one by declaring ``name = its_pkg.module:register`` in this entry-point group.
BUILTIN_COMMANDS: dict[str, str] = {
    "info": "sam2_vitplug.cli.info",
    "check": "sam2_vitplug.cli.check",
    "fewshot": "sam2_vitplug.cli.fewshot",
    "features": "sam2_vitplug.cli.features",
    "seg": "sam2_vitplug.cli.seg",
    "train": "sam2_vitplug.cli.train",
    "export": "sam2_vitplug.cli.export",
    "app": "sam2_vitplug.cli.app",
}
ENTRY_POINT_GROUP = "sam2_vitplug.commands"


def _plugin_commands() -> list[metadata.EntryPoint]:
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN_COMMANDS
             or ep.value.split(":")[0] != BUILTIN_COMMANDS[ep.name]]
    clash = sorted({ep.name for ep in found} & set(BUILTIN_COMMANDS))
    if clash:
        raise RuntimeError(f"entry point(s) {clash} in '{ENTRY_POINT_GROUP}' would replace built-in sam2-vitplug "
                           "command(s); rename them in the package that declares them")
    return sorted({ep.name: ep for ep in found}.values(), key=lambda ep: ep.name)


def command_owners() -> dict[str, str]:
    """Command name -> the distribution that provides it (``info`` shows it)."""
    owners = dict.fromkeys(BUILTIN_COMMANDS, "sam2-vitplug")
    for ep in _plugin_commands():
        owners[ep.name] = ep.dist.name if getattr(ep, "dist", None) else "?"
    return owners


def build_parser() -> HelpParser:
    """The ``sam2-vitplug`` parser with every built-in and plug-in command."""
    from ..version import __version__

    parser = HelpParser(prog="sam2-vitplug", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sam2-vitplug {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level; show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for module in BUILTIN_COMMANDS.values():
        import_module(module).register(sub)
    for ep in _plugin_commands():
        ep.load()(sub)
    return parser


def _user_error(err: BaseException) -> BaseException | None:
    """Deprecated alias of :func:`sam2_vitplug.errors.user_error`."""
    return user_error(err)


def _train_argv(argv: list[str]) -> tuple[bool, list[str]] | None:
    """``(verbose, rest)`` when ``argv`` is ``[-v] train ...``: training parses its own flags
    (intermixed ``key=value`` overrides, which argparse subcommands cannot take)."""
    head = 0
    while head < len(argv) and argv[head] in ("-v", "--verbose"):
        head += 1
    if head < len(argv) and argv[head] == "train":
        return head > 0, argv[head + 1:]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    train = _train_argv(argv)
    if train is not None:
        from .train import main as train_main

        try:
            return train_main(train[1], prog="sam2-vitplug train", verbose=train[0])
        except SystemExit as done:  # argparse's --help and usage errors, and one-line user errors
            return done.code if isinstance(done.code, int) else 0 if done.code is None else 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # upstream sam2 calls the deprecated torch.jit.script at import; not actionable for users
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    try:
        if getattr(args, "device", None) is not None:  # every command's --device, checked before any work
            args.device = parse_device(args.device)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - reduced to one line when it is the user's input
        cause = user_error(err)
        if cause is None or args.verbose:
            raise
        print(f"sam2-vitplug: error: {one_line(cause)}", file=sys.stderr)
        return 2
