"""Issue 15 across commands: the one --device parser, help text with defaults, file modes that
follow the umask, readable training curves. In-process (no subprocess), small inputs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_vitplug.atomic import atomic_target, atomic_write_bytes, file_mode
from sam2_vitplug.cli import HelpFormatter, build_parser, main
from sam2_vitplug.devices import parse_device


# ---- --device ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("tpu9", "--device 'tpu9' is not a device; use cpu, cuda, cuda:N or mps"),
    ("cpu:1", "there is one CPU device"),
    ("cuda", "no CUDA GPU is visible here" if not torch.cuda.is_available() else None),
    ("cuda:99", "no CUDA GPU is visible here" if not torch.cuda.is_available() else "CUDA device(s)"),
])
def test_parse_device_refuses_with_one_line(text, expected):
    if expected is None:
        assert parse_device(text) == "cuda"
        return
    with pytest.raises(ValueError) as err:
        parse_device(text)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_parse_device_accepts_cpu_and_defaults():
    assert parse_device("CPU") == "cpu" and parse_device(None) in ("cpu", "cuda", "mps")


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(command words, parser)`` for every parser below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def _minimal_argv(words: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """The command with a dummy value for every required argument (the --device check comes
    before any of them is looked at)."""
    argv = list(words)
    for action in parser._actions:
        if action.option_strings and action.required:
            argv += [action.option_strings[0], "1" if action.type in (int, float) else "x"]
        elif not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            argv.append("x")
    return argv


def _device_commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(w, p) for w, p in _subparsers(build_parser())
            if any("--device" in a.option_strings for a in p._actions)]


def test_every_command_with_device_refuses_a_bad_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _device_commands()
    assert {" ".join(w) for w, _ in commands} >= {"check", "seg train", "seg eval", "seg predict", "features",
                                                  "export"}
    for words, parser in commands:
        if words == ("train",):  # upstream's Trainer takes cuda or cpu only: tests/test_training_cli.py
            continue
        assert main([*_minimal_argv(words, parser), "--device", "tpu9"]) == 2, words
        err = capsys.readouterr().err.strip()
        assert err == ("sam2-vitplug: error: --device 'tpu9' is not a device; use cpu, cuda, cuda:N or mps "
                       "(default: the best available)"), (words, err)
    assert list(tmp_path.iterdir()) == []  # nothing written by any of them


# ---- help ---------------------------------------------------------------------------------------
def test_top_level_help_lists_every_subcommand_on_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out.splitlines()
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for choice in action._choices_actions:
        line = next((ln for ln in out if ln.strip().startswith(choice.dest + " ")), None)
        assert line is not None and choice.help in line, (choice.dest, out)


def test_every_flag_has_help_with_its_default():
    missing = []
    for words, parser in [((), build_parser()), *_subparsers(build_parser())]:
        formatter = HelpFormatter(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            text = formatter._get_help_string(action) or ""
            if not text.strip() or (action.option_strings and "default" not in text and "required" not in text):
                missing.append(f"{' '.join(words)} {'/'.join(action.option_strings) or action.dest}: {text!r}")
    assert not missing, missing


# ---- file modes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert file_mode() == mode
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        with atomic_target(tmp_path / "b.png", suffix=".png") as tmp:
            Image.new("RGB", (2, 2)).save(tmp)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.json": mode, "b.png": mode}


def test_atomic_target_leaves_nothing_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_target(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_features_outputs_follow_the_umask(tiny_models, tmp_path):
    image = tmp_path / "in" / "p.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    old = os.umask(0o022)
    try:
        assert main(["features", str(image), "--encoder", str(tiny_models["dinov2"]), "--transforms", "1",
                     "--input-size", "28", "--out", str(tmp_path / "out" / "f.safetensors"), "--pca",
                     str(tmp_path / "out" / "f.png"), "--quiet", "--device", "cpu"]) == 0
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()} == {
        "f.safetensors": "0o644", "f.png": "0o644"}


# ---- training curves ----------------------------------------------------------------------------
def test_curves_have_tick_labels_axis_names_and_legends(tmp_path):
    from sam2_vitplug.heads.plots import history_figure, plot_history

    history = [{"epoch": e, "train_loss": 1 / e, "pixel_accuracy": 0.5 + e / 40, "mIoU": 0.2 + e / 30}
               for e in range(1, 11)]
    figure = history_figure(history)
    figure.canvas.draw()  # tick labels exist only once drawn
    for axes, ylabel, name in zip(figure.axes, ["loss", "accuracy", "mIoU"], ["train", "val", "val"]):
        assert (axes.get_xlabel(), axes.get_ylabel()) == ("epoch", ylabel)
        assert [t.get_text() for t in axes.get_legend().get_texts()] == [name]
        yticks = [t for t in axes.get_yticklabels() if t.get_text()]
        assert len(yticks) >= 3 and all(t.get_fontsize() >= 10 for t in yticks)  # readable, not 8 px
        epochs = [float(t.get_text().replace("\u2212", "-")) for t in axes.get_xticklabels() if t.get_text()]
        assert epochs and all(e == int(e) for e in epochs)  # whole epochs only
    plot_history(history, tmp_path / "curves.png")
    image = np.asarray(Image.open(tmp_path / "curves.png").convert("L"))
    assert image.shape == (400, 1260)
    # the first panel's y tick labels sit left of its axis: several rows of dark text there
    assert (image[50:340, 0:60] < 200).any(axis=1).sum() > 20


def test_curves_say_when_there_is_no_validation(tmp_path):
    from sam2_vitplug.heads.plots import history_figure

    figure = history_figure([{"epoch": 1, "train_loss": 0.5}])
    notes = [t.get_text() for t in figure.axes[1].texts]
    assert notes == ["no validation (train with --validate)"]


def test_load_rgb_names_a_truncated_image(tmp_path):
    from sam2_vitplug.matching.io import load_rgb

    photo = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photo)
    photo.write_bytes(photo.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"image '.*cut\.jpg' cannot be decoded .*truncated"):
        load_rgb(photo)
