"""Checks on the composed training config that must pass before upstream's launcher creates the
experiment directory: dataset paths exist, checkpoint files are real torch checkpoints.

Why: upstream ``training.train.main`` creates ``experiment_log_dir`` first and hits a bad path
only inside a worker, as an 88-line ``[rank0]`` traceback that does not name the path.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# keys of the overlays' ``dataset`` node that name a folder or a file
FOLDER_KEYS = ("root", "img_folder", "gt_folder")
FILE_KEYS = ("file_list_txt",)


def check_dataset_paths(cfg: DictConfig, name: str) -> None:
    """Every folder/file named under ``dataset`` exists (``root`` first: a mistyped root would
    otherwise be reported as its sub-folders)."""
    dataset = cfg.get("dataset")
    if dataset is None:
        return
    for key in (*FOLDER_KEYS, *FILE_KEYS):
        if key not in dataset or OmegaConf.is_missing(dataset, key):
            continue
        value = OmegaConf.select(cfg, f"dataset.{key}", throw_on_resolution_failure=False)
        if value is None:
            continue
        path = Path(str(value)).expanduser()
        want_dir = key in FOLDER_KEYS
        if want_dir and not path.is_dir():
            what = "is a file, not a folder" if path.is_file() else "does not exist"
            raise FileNotFoundError(f"dataset.{key}={value} {what} (in '{name}'); pass the folder that holds the "
                                    f"data, e.g. dataset.{key}=/path/to/data")
        if not want_dir and not path.is_file():
            raise FileNotFoundError(f"dataset.{key}={value} does not exist (in '{name}'); pass an existing file "
                                    f"or dataset.{key}=null")


def check_checkpoint_file(path: str, flag: str) -> None:
    """``path`` exists and looks like a ``torch.save`` file (a zip archive, or a legacy pickle),
    so an empty or truncated download fails here rather than as an EOFError inside a worker."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist; pass an official SAM 2 .pt checkpoint")
    size = file.stat().st_size
    if size == 0:
        raise ValueError(f"{flag} {path} is empty (0 bytes), probably an interrupted download; download it again")
    with open(file, "rb") as fh:
        head = fh.read(2)
    legacy_pickle = head[:1] == b"\x80"
    if not legacy_pickle and not zipfile.is_zipfile(file):
        raise ValueError(f"{flag} {path} ({size} bytes) is not a torch checkpoint (truncated, or not a .pt file); "
                         "download it again or pass the right file")
