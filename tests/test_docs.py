"""The README and docs/ say what the code does (docs/architecture.md section 9).

* Fenced blocks marked ```` ```bash runnable ```` or ```` ```python runnable ```` are run, each
  in a fresh temporary folder (``tools/`` and ``configs/`` linked in, ``HF_HUB_OFFLINE=1``).
  Python blocks run in this process; a bash block runs command by command (``\\``
  continuations joined, comments dropped), ``sam2-vitplug ...`` through the CLI's ``main`` in
  this process (no interpreter start-up per command), anything else with bash.
* Every ``sam2-vitplug`` subcommand and ``--flag`` in any block or inline code span exists in
  the CLI's parser; flags of ``python -m training_ext.train`` / ``training_ext/train.py`` exist
  in its parser, flags of ``tools/X.py`` in that tool's source; a flag named in prose exists
  in some parser.
* Every relative link (and ``#anchor``) in the README and docs/ resolves.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")

# Flags of programs that are not ours (pip, torchrun, the reference implementation).
FOREIGN_FLAGS = {"--no-build-isolation", "--nproc_per_node", "--standalone", "--dataset", "--no-deps"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(marker: str | None = None) -> list[tuple[str, int, str, str]]:
    """(page, line, info string, body) of every fenced block (only ``marker`` ones if given)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            info = m.group(1).strip()
            if marker is None or info.split()[1:2] == [marker]:
                found.append((_rel(page), text[: m.start()].count("\n") + 1, info, m.group(2)))
    return found


def prose(text: str) -> str:
    return FENCE.sub("", text)


def commands(body: str) -> list[str]:
    """Shell lines of a block: continuations joined, blank and comment-only lines dropped."""
    out, pending = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            out.append(line.strip())
    return out


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # a fragment with an unbalanced quote: fall back to spaces
        return command.split()


# ---------------------------------------------------------------- parsers


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.fixture(scope="module")
def cli():
    from sam2_vitplug.cli import build_parser

    return build_parser()


@pytest.fixture(scope="module")
def train_parser():
    from training_ext.train import build_parser

    return build_parser()


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    opts = set(_options(parser))
    for sub in _subparsers(parser).values():
        opts |= _all_options(sub)
    return opts


def _tool_sources(name: str) -> str:
    tool = ROOT / "tools" / name
    texts = [tool.read_text()] if tool.is_file() else []
    for helper in [ROOT / "tools" / "benchlib.py", ROOT / "tools" / "benchmem.py",
                   *sorted((ROOT / "tools" / "bench_trunk_parts").glob("*.py"))]:
        if helper.is_file():
            texts.append(helper.read_text())
    return "\n".join(texts)


def _flag_in_source(flag: str, source: str) -> bool:
    """A literal ``"--flag"``, or an argparse flag generated from a dataclass field ``flag:``."""
    return (f'"{flag}"' in source or f"'{flag}'" in source
            or re.search(rf"^\s+{flag[2:].replace('-', '_')}\s*:", source, re.M) is not None)


def _resolve_cli(cli: argparse.ArgumentParser, words: list[str]) -> tuple[argparse.ArgumentParser, list[str], str]:
    """Walk subcommand words; return the deepest parser, the rest of the words, the path."""
    parser, path, i = cli, ["sam2-vitplug"], 0
    while i < len(words):
        subs = _subparsers(parser)
        if not subs or words[i].startswith("-"):
            break
        if words[i] not in subs:
            if len(path) == 1:  # the first word must be a subcommand; deeper ones may be values
                raise AssertionError(f"no subcommand `{' '.join(path + [words[i]])}`")
            break
        parser = subs[words[i]]
        path.append(words[i])
        i += 1
    return parser, words[i:], " ".join(path)


def invocations(command: str):
    """(kind, words after the program) for each of our programs named in a shell line.

    kind: ``cli`` (sam2-vitplug, ``-m sam2_vitplug.cli``), ``fewshot`` (``-m
    sam2_vitplug.matching.cli``), ``train`` (training_ext.train) or ``tool:NAME``."""
    words = _words(command)
    for i, w in enumerate(words):
        rest = words[i + 1:]
        if w == "sam2-vitplug" or w.endswith("/sam2-vitplug"):
            yield "cli", rest
        elif w == "-m" and rest[:1] == ["sam2_vitplug.cli"]:
            yield "cli", rest[1:]
        elif w == "-m" and rest[:1] == ["sam2_vitplug.matching.cli"]:
            yield "fewshot", rest[1:]
        elif (w == "-m" and rest[:1] == ["training_ext.train"]):
            yield "train", rest[1:]
        elif w.endswith("training_ext/train.py"):
            yield "train", rest
        elif re.fullmatch(r"(\./)?tools/[\w]+\.py", w):
            yield f"tool:{Path(w).name}", rest


def _segments(rest: list[str]) -> list[str]:
    """Words up to the next shell separator or a word that starts another program."""
    out = []
    for w in rest:
        if w in {"|", "&&", ";", "||", ">", "2>&1"} or w.startswith(">"):
            break
        out.append(w)
    return out


def check_invocation(kind: str, rest: list[str], cli, train_parser, where: str) -> list[str]:
    problems = []
    rest = _segments(rest)
    if kind in ("cli", "fewshot"):
        words = (["fewshot"] + rest) if kind == "fewshot" else rest
        try:
            parser, tail, path = _resolve_cli(cli, words)
        except AssertionError as err:
            return [f"{where}: {err}"]
        options = _options(parser)
    elif kind == "train":
        parser, tail, path = train_parser, rest, "python -m training_ext.train"
        options = _options(parser)
    else:
        name = kind.split(":", 1)[1]
        if not (ROOT / "tools" / name).is_file():
            return [f"{where}: tools/{name} does not exist"]
        source, tail, path = _tool_sources(name), rest, f"tools/{name}"
        for flag in FLAG.findall(" ".join(tail)):
            if not _flag_in_source(flag.split("=")[0], source):
                problems.append(f"{where}: `{path}` has no flag {flag}")
        return problems
    for word in tail:  # `--flag`, `--flag=value`, `[--flag`
        for flag in FLAG.findall(word.split("=", 1)[0]):
            if flag not in options:
                problems.append(f"{where}: `{path}` has no flag {flag}")
    return problems


def test_commands_and_flags_exist(cli, train_parser):
    problems = []
    known = _all_options(cli) | _options(train_parser)
    tool_text = "\n".join(p.read_text() for p in (ROOT / "tools").rglob("*.py"))
    for page in PAGES:
        text = page.read_text()
        where = _rel(page)
        # commands in blocks and inline spans, checked against their own parser
        snippets = [c for m in FENCE.finditer(text) for c in commands(m.group(2))]
        snippets += INLINE.findall(prose(text))
        for snippet in snippets:
            for kind, rest in invocations(snippet):
                problems += check_invocation(kind, rest, cli, train_parser, where)
        for span in INLINE.findall(prose(text)):  # `fewshot run --flag`: a subcommand without the program name
            words = _words(span)
            if words and words[0] in _subparsers(cli) and "sam2-vitplug" not in words:
                problems += check_invocation("cli", words, cli, train_parser, where)
        # a flag named anywhere in prose must exist somewhere
        for span in INLINE.findall(prose(text)):
            for flag in FLAG.findall(span):
                if flag in FOREIGN_FLAGS or flag in known or _flag_in_source(flag, tool_text):
                    continue
                if flag.endswith("-") and any(k.startswith(flag) for k in known):  # `--encoder-*`
                    continue
                problems.append(f"{where}: `{span}` names {flag}, which no parser has")
        # "sam2-vitplug <cmd>" in prose
        for m in re.finditer(r"sam2-vitplug ([a-z][a-z-]*)", prose(text)):
            if m.group(1) not in _subparsers(cli):
                problems.append(f"{where}: no subcommand `sam2-vitplug {m.group(1)}`")
    assert not problems, "\n".join(sorted(set(problems)))


# ---------------------------------------------------------------- links


def _slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = prose(page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_relative_links_resolve():
    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{_rel(page)}: link to {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{_rel(page)}: link to {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_readme_stays_short():
    """A few screens: the manuals live in docs/ (docs/architecture.md section 9)."""
    size = len((ROOT / "README.md").read_text())
    assert size < 8000, f"README.md is {size} characters; move the details to a docs/ page"


def test_every_page_is_linked():
    """Each docs page is reachable from the README or another page."""
    linked = set()
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            linked.add((page.parent / target).resolve())
    orphans = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"not linked from any page: {orphans}"


OLD_NOTES = "DESIGN" + ".md"  # design notes that lived outside the project


def test_no_design_md_references():
    hits = []
    for path in [*PAGES, *ROOT.glob("sam2_vitplug/**/*.py"), *ROOT.glob("training_ext/*.py"),
                 *ROOT.glob("tools/**/*.py"), *ROOT.glob("configs/**/*.yaml"), ROOT / "setup.py",
                 *ROOT.glob("tests/*.py")]:
        if path.name != "test_docs.py" and OLD_NOTES in path.read_text():
            hits.append(_rel(path))
    assert not hits, f"{OLD_NOTES} is not part of the project; point to docs/architecture.md: {hits}"


# ---------------------------------------------------------------- runnable blocks


RUNNABLE = blocks("runnable")


def test_some_blocks_are_runnable():
    langs = {info.split()[0] for _, _, info, _ in RUNNABLE}
    assert {"bash", "python"} <= langs, "README/docs should have runnable bash and python blocks"


@pytest.fixture
def doc_dir(tmp_path, monkeypatch):
    for name in ("tools", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on a shared machine
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page,line,info,body", RUNNABLE, ids=[f"{p}:{n}" for p, n, _, _ in RUNNABLE])
def test_runnable_block(page, line, info, body, doc_dir):
    lang = info.split()[0]
    if lang == "python":
        exec(compile(body, f"{page}:{line}", "exec"), {"__name__": "__doc_block__"})
        return
    assert lang == "bash", f"{page}:{line}: runnable blocks are bash or python, got {lang!r}"
    from sam2_vitplug.cli import main

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands(body):
        words = _words(command)
        # in-process for speed, except training (upstream's launcher sets the multiprocessing start method once)
        if words[:1] == ["sam2-vitplug"] and words[1:2] != ["train"] and not set(words) & {"|", "&&", ";", ">"}:
            rc = main(words[1:])
        else:
            rc = subprocess.run(["bash", "-c", command], cwd=doc_dir, env=env).returncode
        assert rc == 0, f"{page}:{line}: `{command}` exited {rc}"
