"""Run = the CLI's own ``fewshot memory`` then ``fewshot run``, on a worker thread, with progress.

Why this way: the page must agree with the command line, so it builds the very argument lists a
user would type, parses them with the CLI's parser and calls the functions it dispatches to
(``cmd_memory``, ``cmd_run``): no second implementation of any step. The commands are shown in
the page so they can be rerun by hand. Progress is the number of images in the runner's shard
file (one line per finished image), read when the page asks.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..matching.io import atomic_write_json
from .paths import BadRequest, list_images

logger = logging.getLogger(__name__)

SET_RE = re.compile(r"^[A-Za-z_][\w.]*=[^\s]*$")


@dataclass(frozen=True)
class Context:
    """What the app was started with: folders and the SAM2 model."""

    images: Path
    out: Path
    sam2_config: str
    sam2_ckpt: str | None = None
    sam2_override: tuple[str, ...] = ()
    device: str | None = None

    @property
    def refs(self) -> Path:
        return self.out / "references.json"

    @property
    def bank(self) -> Path:
        return self.out / "bank.safetensors"

    @property
    def targets(self) -> Path:
        return self.out / "targets.json"

    @property
    def results(self) -> Path:
        return self.out / "results.json"


def defaults(method: str | None = None) -> dict:
    """The settings the page shows, from the few-shot config of ``method`` (its preset applied)."""
    from ..matching import load_config

    cfg = load_config(method=method)
    return {"method": str(cfg.method), "shots": int(cfg.memory.shots), "points_per_side": int(cfg.proposals.points_per_side),
            "iou_thr": float(cfg.proposals.iou_thr), "input_size": cfg.memory.input_size, "shared_backbone": False,
            "sets": []}


def _num(body: dict, key: str, kind: type, lo: float, hi: float) -> Any:
    value = body.get(key)
    try:
        if isinstance(value, bool):
            raise TypeError
        value = kind(value)
    except (TypeError, ValueError):
        raise BadRequest(f"setting '{key}' must be a number, got {body.get(key)!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"setting '{key}' must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """The Run panel's settings, checked."""

    encoder: str
    method: str
    shots: int
    points_per_side: int
    iou_thr: float
    input_size: int | None = None
    shared_backbone: bool = False
    sets: tuple[str, ...] = ()

    @classmethod
    def parse(cls, body: dict) -> "Settings":
        from ..matching.config import METHODS

        encoder = body.get("encoder")
        if not isinstance(encoder, str) or not encoder.strip():
            raise BadRequest("an encoder is needed to build the bank: type one in Run > encoder "
                             "(e.g. dinov2_demo for sam2_vit_demo) or start the app with --encoder")
        if body.get("method") not in METHODS:
            raise BadRequest(f"method must be one of {', '.join(METHODS)}, got {body.get('method')!r}")
        size = body.get("input_size")
        input_size = None if size in (None, "") else _num(body, "input_size", int, 14, 4096)
        sets = body.get("sets") or []
        if isinstance(sets, str):
            sets = [s for s in sets.split() if s]
        if not isinstance(sets, list) or not all(isinstance(s, str) and SET_RE.match(s) for s in sets):
            raise BadRequest("extra settings must be SECTION.KEY=VALUE, separated by spaces (e.g. memory.min_size=16)")
        return cls(encoder.strip(), str(body["method"]), _num(body, "shots", int, 1, 1000),
                   _num(body, "points_per_side", int, 1, 128), _num(body, "iou_thr", float, 0.0, 1.0),
                   input_size, bool(body.get("shared_backbone")), tuple(sets))


def _sam2_flags(ctx: Context) -> list[str]:
    flags = ["--sam2-config", ctx.sam2_config]
    if ctx.sam2_ckpt:
        flags += ["--sam2-ckpt", ctx.sam2_ckpt]
    for o in ctx.sam2_override:
        flags += ["--sam2-override", o]
    if ctx.device:
        flags += ["--device", ctx.device]
    return flags


def memory_argv(ctx: Context, s: Settings) -> list[str]:
    """``sam2-vitplug fewshot memory`` arguments for these settings."""
    argv = ["fewshot", "memory", "--refs", str(ctx.refs), "--images", str(ctx.images), "--encoder", s.encoder,
            "--shots", str(s.shots), "--method", s.method, "--out", str(ctx.bank)]
    if s.input_size:
        argv += ["--input-size", str(s.input_size)]
    return argv + [a for x in s.sets for a in ("--set", x)] + _sam2_flags(ctx)


def run_argv(ctx: Context, s: Settings) -> list[str]:
    """``sam2-vitplug fewshot run`` arguments for these settings (targets listed in ``targets.json``)."""
    argv = ["fewshot", "run", "--bank", str(ctx.bank), "--images", str(ctx.images), "--ann", str(ctx.targets),
            "--points-per-side", str(s.points_per_side), "--iou-thr", repr(s.iou_thr), "--method", s.method,
            "--out", str(ctx.results), "--quiet"]
    if s.shared_backbone:
        argv.append("--shared-backbone")
    return argv + [a for x in s.sets for a in ("--set", x)] + _sam2_flags(ctx)


def write_targets(ctx: Context, names: Sequence[str] | None, categories: list[dict]) -> int:
    """``targets.json``: the chosen images with the ids ``images_from_folder`` gives them. Returns their count."""
    from PIL import Image

    from ..matching.runner import images_from_folder

    allowed = set(list_images(ctx.images))
    entries = [e for e in images_from_folder(ctx.images) if e.file_name in allowed]
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("targets must be a list of image file names")
        unknown = sorted(set(names) - allowed)
        if unknown:
            raise BadRequest(f"no such images in the folder: {unknown[:5]}")
        entries = [e for e in entries if e.file_name in set(names)]
    if not entries:
        raise BadRequest("choose at least one target image")
    images = []
    for e in entries:
        try:
            with Image.open(ctx.images / e.file_name) as im:
                images.append({"id": e.image_id, "file_name": e.file_name, "width": im.width, "height": im.height})
        except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified, truncated header
            raise BadRequest(f"'{e.file_name}' cannot be read as an image ({type(err).__name__}); "
                             "remove it from the folder or leave it out of the targets") from None
    atomic_write_json(ctx.targets, {"images": images, "annotations": [], "categories": categories}, indent=1)
    return len(images)


def call_cli(argv: list[str]) -> None:
    """Parse ``argv`` with the CLI's parser and call its command, as ``sam2-vitplug`` does; a user
    error comes out as ``ValueError`` with the one-line message the CLI would print."""
    from ..cli import build_parser
    from ..devices import parse_device
    from ..errors import one_line, user_error

    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise ValueError(f"the command line was refused: {shlex.join(['sam2-vitplug', *argv])}") from None
    if getattr(args, "device", None) is not None:
        args.device = parse_device(args.device)
    try:
        code = args.func(args)
    except Exception as err:  # noqa: BLE001 - reduced like the CLI's main
        cause = user_error(err)
        if cause is None:
            raise
        raise ValueError(one_line(cause)) from err
    if code:
        raise ValueError(f"'{argv[0]} {argv[1]}' exited with code {code}")


@dataclass
class JobState:
    state: str = "idle"  # idle | running | done | error
    stage: str = ""
    total: int = 0
    message: str = ""
    commands: list[str] = field(default_factory=list)
    started: float = 0.0
    seconds: float = 0.0


class Jobs:
    """One run at a time, on a daemon thread; ``on_done`` gets the results path when it succeeds."""

    def __init__(self, ctx: Context, on_done: Callable[[Path], None], cli: Callable[[list[str]], None] = call_cli) -> None:
        self.ctx = ctx
        self._on_done = on_done
        self._cli = cli
        self._lock = threading.Lock()
        self.job = JobState()

    def start(self, settings: Settings, targets: Sequence[str] | None, categories: list[dict]) -> None:
        """Check, write ``targets.json``, then run memory and run on a worker thread."""
        if not categories:
            raise BadRequest("make at least one reference first (References tab: click an object, name its class, Add)")
        with self._lock:
            if self.job.state == "running":
                raise BadRequest("a run is already in progress; wait for it to finish")
            total = write_targets(self.ctx, targets, categories)
            mem, run = memory_argv(self.ctx, settings), run_argv(self.ctx, settings)
            self.job = JobState("running", "building the memory bank", total, "",
                                [shlex.join(["sam2-vitplug", *a]) for a in (mem, run)], time.time())
        threading.Thread(target=self._work, args=(mem, run), daemon=True, name="fewshot-run").start()

    def _work(self, mem: list[str], run: list[str]) -> None:
        try:
            self._cli(mem)
            res = self.ctx.results  # a fresh run, never a resume: drop the last one's results, shards, settings record
            for stale in [res, res.with_name(res.name + ".settings.json"), *res.parent.glob(res.name + ".shard-*")]:
                stale.unlink(missing_ok=True)
            self._set(stage="segmenting the targets")
            self._cli(run)
            self._on_done(self.ctx.results)
            self._set(state="done", stage="done")
        except Exception as err:  # noqa: BLE001 - shown in the page; the log keeps the traceback
            if not isinstance(err, ValueError):
                logger.exception("run failed")
            self._set(state="error", message=str(err) or type(err).__name__)
        finally:
            self._set(seconds=round(time.time() - self.job.started, 1))

    def _set(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.job, k, v)

    def status(self) -> dict:
        """The job as the page shows it, with ``done`` images counted from the shard file."""
        from ..matching.runner import finished_images

        with self._lock:
            job = dict(self.job.__dict__)
        if job["state"] == "running" and job["stage"].startswith("segmenting"):
            job["done"] = len(finished_images(self.ctx.results))
        else:
            job["done"] = job["total"] if job["state"] == "done" else 0
        if job["state"] == "running":
            job["seconds"] = round(time.time() - job["started"], 1)
        return job
