"""Running a predictor over many images: per-image shard files, resume, multi-process split.

Each process appends one JSON line per finished image to ``<out>.shard-<rank>.jsonl`` (flushed
and fsynced), so a killed run loses at most the image in progress. A restarted run reads every
shard, skips finished images, and the final ``<out>`` lists the results sorted by image id,
written atomically by rank 0 once all ranks are done; shards are then removed. Image ``i`` of
the id-sorted list goes to rank ``i % world_size``: no divisibility is assumed.

A run resumes only what it can resume: ``<out>.settings.json`` records everything that changes
the output (the caller's ``settings``: bank, weights, resolved config, version); a rerun whose
settings differ refuses, naming what differs, and ``overwrite=True`` starts afresh. A lock file
per rank (``<out>.lock-<rank>``) keeps a second run off the same ``<out>`` while one is alive.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..run_lock import RunLock
from ..run_settings import changed_settings
from .io import atomic_write_bytes, load_rgb

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageEntry:
    image_id: int
    file_name: str


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1


def dist_info(device: str = "cpu") -> DistInfo:
    """Rank and world size; initialises ``torch.distributed`` when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def images_from_coco(coco: dict) -> list[ImageEntry]:
    return sorted((ImageEntry(int(im["id"]), im["file_name"]) for im in coco["images"]), key=lambda e: e.image_id)


def images_from_folder(folder: str | os.PathLike) -> list[ImageEntry]:
    """Every image file in ``folder``, ids 1..N in file-name order (no annotations needed)."""
    from ..images import IMAGE_EXTS

    names = sorted(p.name for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    return [ImageEntry(i + 1, n) for i, n in enumerate(names)]


def shard_paths(out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    return sorted(out.parent.glob(f"{out.name}.shard-*.jsonl"))


def _read_shard(path: Path) -> dict[int, list]:
    done: dict[int, list] = {}
    data = path.read_bytes()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s: ignoring a truncated line (a killed run)", path)
            continue
        done[int(record["image_id"])] = record["results"]
    return done


def _repair_tail(path: Path) -> None:
    """Cut a partial last line left by a killed process, so appends start on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def settings_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.settings.json"


def check_resumable(out: str | os.PathLike, settings: Mapping[str, Any] | None, *, overwrite: bool = False,
                    info: DistInfo = DistInfo()) -> None:
    """Refuse to resume shards made with other settings; with ``overwrite`` drop them instead.

    Raises ValueError (one line, naming up to 6 differing settings) before anything is written.
    Rank 0 writes the settings record of a fresh run."""
    out = Path(out)
    record, shards = settings_path(out), shard_paths(out)
    if overwrite:
        if info.rank == 0:  # every rank's shards (an earlier run may have had more ranks); the others wait
            for path in [*shards, record]:
                path.unlink(missing_ok=True)
    elif shards or record.is_file():
        if not record.is_file():
            raise ValueError(f"'{out}' has shards of an earlier run ({shards[0].name}) but no settings record, so "
                             "this run cannot tell whether it may resume them; pass --overwrite to start afresh")
        try:
            old = json.loads(record.read_text())
        except ValueError as err:
            raise ValueError(f"'{record}' is unreadable ({err}); pass --overwrite to start afresh") from err
        diffs = changed_settings(old, json.loads(json.dumps(settings or {})))
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise ValueError(f"'{out}' holds a partial run with other settings ({shown}); rerun with that run's "
                             "settings to resume it, pass --overwrite to start afresh, or use another --out")
    if info.rank == 0 and not record.is_file():
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(record, json.dumps(settings or {}, indent=1, sort_keys=True).encode())


def finished_images(out: str | os.PathLike) -> dict[int, list]:
    done: dict[int, list] = {}
    for path in shard_paths(out):
        done.update(_read_shard(path))
    return done


def run_images(
    predict: Callable[[np.ndarray, int], list[dict]],
    images: Sequence[ImageEntry],
    image_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    info: DistInfo = DistInfo(),
    progress: bool = True,
    on_image: Callable[[int], None] | None = None,
    settings: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[dict] | None:
    """Predict every image (this rank's share), then merge. Returns the merged results on rank 0.

    Missing image files raise ``FileNotFoundError`` and a partial run made with other
    ``settings`` raises ``ValueError`` (see :func:`check_resumable`), before anything is written."""
    root = Path(image_root)
    missing = [e.file_name for e in images if not (root / e.file_name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) missing under '{root}': {missing[:5]}"
                                f"{' ...' if len(missing) > 5 else ''}; check --images")
    ids = [e.image_id for e in images]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids are not unique in the image list")
    _check_headers(root, images)
    out = Path(out)
    lock = RunLock(out.parent / f"{out.name}.lock-{info.rank}", f"--out '{out}'",
                   "wait for it to finish or stop it, or pass another --out")
    with lock:
        check_resumable(out, settings, overwrite=overwrite, info=info)
        _barrier(info)
        return _run_locked(predict, images, root, out, ids, info=info, progress=progress, on_image=on_image)


def _check_headers(root: Path, images: Sequence[ImageEntry]) -> None:
    """Open every image's header (cheap, no decoding) so a zero-byte or non-image file stops the
    run before any shard is written; a file truncated after its header fails when it is decoded,
    naming it, with the finished images kept for the rerun."""
    from PIL import Image

    for entry in images:
        try:
            with Image.open(root / entry.file_name):
                pass
        except (OSError, SyntaxError, ValueError):
            load_rgb(root / entry.file_name)  # raises the one-line error naming the file
            raise


def _run_locked(predict, images, root: Path, out: Path, ids: list[int], *, info: DistInfo, progress: bool,
                on_image) -> list[dict] | None:
    from tqdm import tqdm

    done = finished_images(out)
    mine = [e for i, e in enumerate(sorted(images, key=lambda e: e.image_id)) if i % info.world_size == info.rank]
    todo = [e for e in mine if e.image_id not in done]
    if len(todo) < len(mine):
        logger.info("rank %d: resuming, %d of %d images already done", info.rank, len(mine) - len(todo), len(mine))
    shard = out.parent / f"{out.name}.shard-{info.rank}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(shard)
    with open(shard, "ab") as fh:
        for entry in tqdm(todo, desc=f"few-shot (rank {info.rank})", disable=not progress):
            try:
                image = load_rgb(root / entry.file_name)
            except ValueError as err:  # truncated after a valid header: say that the finished work is kept
                raise ValueError(f"{err}; the finished images are kept in {shard.name}: fix the file and rerun "
                                 "the same command to resume") from err
            results = predict(image, entry.image_id)
            fh.write(json.dumps({"image_id": entry.image_id, "results": results}).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            if on_image is not None:
                on_image(entry.image_id)
    _barrier(info)
    merged = None
    if info.rank == 0:
        merged = merge_shards(out, ids)
    _barrier(info)
    return merged


def merge_shards(out: str | os.PathLike, image_ids: Sequence[int]) -> list[dict]:
    """Write ``out`` from the shards (sorted by image id) and remove the shards."""
    done = finished_images(out)
    missing = [i for i in image_ids if i not in done]
    if missing:
        raise RuntimeError(f"shards of '{out}' lack images {missing[:10]}; rerun to finish them")
    merged = [r for i in sorted(image_ids) for r in done[i]]
    atomic_write_bytes(out, json.dumps(merged).encode())
    for path in shard_paths(out):
        path.unlink()
    settings_path(out).unlink(missing_ok=True)
    return merged
