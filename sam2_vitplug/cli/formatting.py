"""The help style every ``sam2-vitplug`` parser shares (and ``python -m training_ext.train``)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default (like ``ArgumentDefaultsHelpFormatter``),
    unless the text already states it; descriptions keep their line breaks; 120 columns so a
    subcommand's one-line summary stays on one line."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 30,
                 width: int | None = None) -> None:
        import shutil

        super().__init__(prog, indent_increment, max_help_position,
                         width or max(120, shutil.get_terminal_size((120, 24)).columns - 2))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)".strip()
        default = action.default
        if isinstance(default, bool) or default is None or default == []:
            shown = "off" if default is False or action.nargs == 0 else "none"
        elif isinstance(default, (list, tuple)):
            shown = " ".join(map(str, default))
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})".strip()


class HelpParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; subcommand parsers inherit it
    (``add_subparsers`` builds them with ``type(self)``), so every command gets the same help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("help") is None and kwargs.get("help", "") is not argparse.SUPPRESS:
            kwargs["help"] = " "  # an empty help hides the line; the formatter appends the default
        return super().add_argument(*args, **kwargs)

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        plain = group.add_argument

        def add_argument(*a, **kw):
            if kw.get("help") is None:
                kw["help"] = " "
            return plain(*a, **kw)

        group.add_argument = add_argument  # type: ignore[method-assign]
        return group
