"""Issue 16 item 1: one CLI package (`sam2_vitplug/cli/`), commands registered from one place
(built-ins plus the `sam2_vitplug.commands` entry-point group), `sam2-vitplug train` equal to
`python -m training_ext.train`, no library module importing the CLI, and the old import paths
kept as deprecation aliases."""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from sam2_vitplug import cli

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
# modules outside sam2_vitplug/cli/ allowed to import it: entry points and deprecation aliases
CLI_IMPORTERS = {
    "sam2_vitplug/matching/cli.py", "sam2_vitplug/heads/cli.py", "sam2_vitplug/app/cli.py",
    "sam2_vitplug/features_cli.py", "training_ext/export_cli.py", "training_ext/train.py",
    "sam2_vitplug/app/jobs.py",  # the app runs CLI commands for its page (an entry point itself)
}


def _imports_cli(path: Path) -> bool:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if any(n == "sam2_vitplug.cli" or n.startswith("sam2_vitplug.cli.") for n in names):
            return True
    return False


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted([*ROOT.glob("sam2_vitplug/**/*.py"), *ROOT.glob("training_ext/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("sam2_vitplug/cli/") or rel in CLI_IMPORTERS:
            continue
        if _imports_cli(path):
            offenders.append(rel)
    assert offenders == [], f"library modules import the CLI: {offenders}"


def test_the_scan_sees_relative_and_absolute_imports(tmp_path):
    """The scanner itself: both import spellings of the CLI are caught, look-alikes are not."""
    pkg = ROOT / "sam2_vitplug" / "matching"
    probe = pkg / "_probe_cli_scan.py"
    try:
        for text, hit in (("from ..cli import main\n", True), ("from sam2_vitplug.cli.fewshot import cmd_run\n", True),
                          ("import sam2_vitplug.cli\n", True), ("from ..client import x\n", False),
                          ("from .cli_helpers import y\n", False)):
            probe.write_text(text)
            assert _imports_cli(probe) is hit, text
    finally:
        probe.unlink(missing_ok=True)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_comes_from_its_own_module():
    subs = _subcommands(cli.build_parser())
    assert list(subs) == list(cli.BUILTIN_COMMANDS)
    for name, module in cli.BUILTIN_COMMANDS.items():
        assert module == f"sam2_vitplug.cli.{name}"
        assert (ROOT / "sam2_vitplug" / "cli" / f"{name}.py").is_file()
        nested = [a for a in subs[name]._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = list(nested[0].choices.values()) if nested else [subs[name]]
        assert leaves and all(callable(leaf.get_default("func")) for leaf in leaves), name


def _fake_entry_points(monkeypatch, *eps: metadata.EntryPoint) -> None:
    real = metadata.entry_points

    def entry_points(**kw):
        if kw.get("group") == cli.ENTRY_POINT_GROUP:
            return metadata.EntryPoints(eps)
        return real(**kw)

    monkeypatch.setattr(cli.metadata, "entry_points", entry_points)


def register_hello(subparsers) -> None:  # a third-party command, loaded through the entry point
    p = subparsers.add_parser("hello", help="say hello")
    p.add_argument("--name", default="world")
    p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)


def test_a_package_adds_a_command_through_the_entry_point_group(monkeypatch, capsys):
    _fake_entry_points(monkeypatch, metadata.EntryPoint("hello", f"{__name__}:register_hello", cli.ENTRY_POINT_GROUP))
    assert "hello" in _subcommands(cli.build_parser())
    assert cli.main(["hello", "--name", "plugin"]) == 0
    assert capsys.readouterr().out == "hello plugin\n"


def test_an_entry_point_cannot_replace_a_built_in_command(monkeypatch):
    _fake_entry_points(monkeypatch, metadata.EntryPoint("fewshot", f"{__name__}:register_hello", cli.ENTRY_POINT_GROUP))
    with pytest.raises(RuntimeError, match=r"\['fewshot'\].*built-in"):
        cli.build_parser()


def _option_strings(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {s: (a.dest, a.default, tuple(a.choices) if a.choices else None, a.required)
            for a in parser._actions for s in a.option_strings}


def test_train_has_exactly_the_flags_of_training_ext_train():
    from training_ext.train import build_parser as train_parser

    ours = _subcommands(cli.build_parser())["train"]
    assert _option_strings(ours) == _option_strings(train_parser())
    positional = [a.dest for a in ours._actions if not a.option_strings]
    assert positional == [a.dest for a in train_parser()._actions if not a.option_strings] == ["overrides"]


def test_train_through_the_cli_takes_overrides_between_flags(capsys):
    """`sam2-vitplug train` parses like `python -m training_ext.train` (intermixed overrides)."""
    from training_ext.train import main as train_main

    argv = ["--config", "configs/training/tiny_cpu.yaml", "dataset.root=/data/x", "--device", "cpu",
            "--print-config", "trainer.max_epochs=3"]
    assert train_main(argv) == 0
    expected = capsys.readouterr().out
    assert cli.main(["train", *argv]) == 0
    got = capsys.readouterr().out
    assert got == expected and "max_epochs: 3" in got and "/data/x" in got


def test_train_user_error_is_one_line_exit_2(capsys):
    assert cli.main(["train", "--config", "configs/training/tiny_cpu.yaml", "not-an-override"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sam2-vitplug: error: overrides must look like key=value")


@pytest.mark.parametrize("old, new, names", [
    ("sam2_vitplug.matching.cli", "sam2_vitplug.cli.fewshot", ("cmd_memory", "cmd_run", "cmd_eval", "register")),
    ("sam2_vitplug.heads.cli", "sam2_vitplug.cli.seg", ("cmd_train", "cmd_eval", "cmd_predict", "register")),
    ("sam2_vitplug.app.cli", "sam2_vitplug.cli.app", ("cmd_app", "register")),
    ("sam2_vitplug.features_cli", "sam2_vitplug.cli.features", ("cmd_features", "register")),
])
def test_old_paths_are_deprecation_aliases(old, new, names):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    target = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(target, name)


def test_old_helpers_stay_importable_from_the_cli_package():
    from sam2_vitplug.cli import HelpFormatter, build_parser, default_device, main, parse_device  # noqa: F401
    from sam2_vitplug.features_cli import pca_rgb
    from sam2_vitplug.feature_maps import pca_rgb as new_pca_rgb

    assert pca_rgb is new_pca_rgb


@pytest.mark.parametrize("argv, first", [
    ([sys.executable, "-m", "sam2_vitplug.cli", "--help"], "usage: sam2-vitplug"),
    ([sys.executable, "-m", "sam2_vitplug.matching.cli", "memory", "--help"], "usage: sam2-vitplug fewshot memory"),
    ([sys.executable, "-m", "training_ext.export_cli", "--help"], "usage: sam2-vitplug export"),
    ([sys.executable, str(ROOT / "training_ext" / "train.py"), "--help"], "usage: python -m training_ext.train"),
])
def test_every_way_in_starts(argv, first):
    out = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(first)
    if "matching.cli" in argv[2]:
        assert "deprecated" in out.stderr


def test_info_lists_the_commands_and_the_cpu_bf16_capability(capsys):
    import json

    from sam2_vitplug.precision import cpu_fast_bf16

    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["commands"] == dict.fromkeys(cli.BUILTIN_COMMANDS, "sam2-vitplug")
    assert info["cpu_fast_bf16"] is cpu_fast_bf16()
