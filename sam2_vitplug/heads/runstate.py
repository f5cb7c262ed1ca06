"""What lets ``seg train`` resume only what it can resume: a fingerprint of every setting that
changes the result (resolved model and training settings, the data listing, the package
version) kept beside the checkpoints, the decision "fresh / resume / refuse" for a checkpoint
directory, and a lock file that keeps two runs out of one directory.

Why: rerunning an interrupted command should continue it, but continuing with another
``--lr`` or other data would silently mix two runs in one set of checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..run_lock import RunLock
from ..run_settings import flatten

FINGERPRINT_FILE = "run_fingerprint.json"
LOCK_FILE = "train.lock"
# files a run writes; --overwrite removes exactly these (feature_cache/ is keyed by content, kept)
RUN_FILES = ("last.pt", "best.pt", "history.json", "curves.png", "run_config.json", FINGERPRINT_FILE)
RUN_GLOBS = ("epoch_*.pt",)
RUN_DIRS = ("metrics",)
IGNORED_ENTRIES = (LOCK_FILE, "feature_cache")
# TrainConfig fields that do not change the trained weights (or are covered by the data listing)
NOT_FINGERPRINTED = ("image_paths", "mask_paths", "val_image_paths", "val_mask_paths", "checkpoint_dir",
                     "resume_checkpoint", "progress", "num_workers", "log_interval", "save_interval", "device",
                     "overwrite")


def _listing(pairs: Sequence[tuple[Path, Path]]) -> list[list[Any]]:
    """File names and sizes of each (image, mask) pair: renaming, replacing or reordering data
    changes it, moving the whole dataset does not."""
    return [[Path(i).name, os.path.getsize(i), Path(m).name, os.path.getsize(m)] for i, m in pairs]


def _digest(listing: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def fingerprint(model_config: Any, train_config: Any, pairs: Sequence[tuple[Path, Path]],
                val_pairs: Sequence[tuple[Path, Path]], *, warmup_epochs: int) -> dict[str, Any]:
    """Everything that changes a run's output, as plain JSON."""
    from ..version import __version__

    train = {k: v for k, v in asdict(train_config).items() if k not in NOT_FINGERPRINTED}
    train["warmup_epochs"] = warmup_epochs  # the resolved value, not None
    model = asdict(model_config)
    model["mean"], model["std"] = list(model["mean"]), list(model["std"])
    data = {}
    for name, items in (("train", pairs), ("val", val_pairs)):
        listing = _listing(items)
        data[name] = {"pairs": len(listing), "sha256": _digest(listing)}
    return {"sam2_vitplug": __version__, "model": model, "train": train, "data": data}


def listings(pairs: Sequence[tuple[Path, Path]], val_pairs: Sequence[tuple[Path, Path]]) -> dict[str, list]:
    """The full listings, stored in the fingerprint file (not compared) so that a refusal can
    name the first file that differs."""
    return {"train": _listing(pairs), "val": _listing(val_pairs)}


def _first_file_difference(old: list, new: list) -> str:
    for a, b in zip(old, new):
        if a != b:
            return f"first difference: {a[0]!r} ({a[1]} B) / {a[2]!r} -> {b[0]!r} ({b[1]} B) / {b[2]!r}"
    if len(old) != len(new):
        longer = old if len(old) > len(new) else new
        extra = longer[min(len(old), len(new))]
        return f"{'dropped' if longer is old else 'added'}: {extra[0]!r}"
    return "same names and sizes"


def differences(old: dict[str, Any], new: dict[str, Any], old_listings: dict[str, list] | None = None,
                new_listings: dict[str, list] | None = None) -> list[str]:
    """Human-readable ``setting: old -> new`` lines (empty when the fingerprints match)."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key) or (key.startswith("data.") and key.endswith(".pairs")):
            continue
        if key.startswith("data.") and key.endswith(".sha256"):
            split = key.split(".")[1]
            pairs = f"{a.get(f'data.{split}.pairs')} -> {b.get(f'data.{split}.pairs')} pairs"
            detail = ""
            if old_listings and new_listings and split in old_listings and split in new_listings:
                detail = "; " + _first_file_difference(old_listings[split], new_listings[split])
            out.append(f"{split} data ({pairs}{detail})")
            continue
        name = key.split(".", 1)[-1] if key.startswith(("train.", "model.")) else key
        out.append(f"{name} {a.get(key)!r} -> {b.get(key)!r}")
    return out


def _run_entries(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name not in IGNORED_ENTRIES and not p.name.startswith("."))


def resume_point(directory: Path, fp: dict[str, Any], new_listings: dict[str, list], *,
                 overwrite: bool) -> Path | None:
    """Decide what to do with ``--checkpoint-dir``: ``last.pt`` to resume from, or None for a
    fresh start (an empty directory, a matching run that saved no epoch yet, or ``overwrite``).
    Raises ValueError naming the differing settings (or the unknown content) otherwise."""
    entries = _run_entries(directory)
    if not entries or overwrite:
        return None
    record = directory / FINGERPRINT_FILE
    where = f"--checkpoint-dir '{directory}'"
    if not record.is_file():
        names = ", ".join(p.name for p in entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"{where} is not empty ({names}) and has no {FINGERPRINT_FILE}, so this run cannot tell "
                         "whether it may resume there; pass --overwrite to start afresh in it, or another "
                         "--checkpoint-dir")
    try:
        stored = json.loads(record.read_text())
        old_fp, old_listings = stored["fingerprint"], stored.get("listings")
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"'{record}' is unreadable ({err}); pass --overwrite to start afresh") from err
    diffs = differences(old_fp, fp, old_listings, new_listings)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ValueError(f"{where} holds a run with other settings ({shown}); rerun with that run's settings to "
                         "resume it, or pass --overwrite to start afresh, or use another --checkpoint-dir")
    last = directory / "last.pt"
    return last if last.is_file() else None


def write_fingerprint(directory: Path, fp: dict[str, Any], new_listings: dict[str, list]) -> None:
    from ..atomic import atomic_write_bytes

    atomic_write_bytes(directory / FINGERPRINT_FILE,
                       json.dumps({"fingerprint": fp, "listings": new_listings}, indent=1).encode())


def clear_run(directory: Path) -> list[str]:
    """Remove the files an earlier run wrote (``--overwrite``); other files stay. Returns the
    removed names."""
    removed = []
    for name in RUN_FILES:
        path = directory / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    for pattern in RUN_GLOBS:
        for path in sorted(directory.glob(pattern)):
            path.unlink()
            removed.append(path.name)
    for name in RUN_DIRS:
        if (directory / name).is_dir():
            shutil.rmtree(directory / name)
            removed.append(name + "/")
    return removed


def directory_lock(directory: Path, flag: str = "--checkpoint-dir") -> RunLock:
    """``<dir>/train.lock`` held for the run's lifetime (see :class:`sam2_vitplug.run_lock.RunLock`);
    the directory is removed again if the lock created it and nothing else was written."""
    directory = Path(directory)
    return RunLock(directory / LOCK_FILE, f"{flag} '{directory}'",
                 f"wait for it to finish or stop it, or pass another {flag}", cleanup_dir=directory)
