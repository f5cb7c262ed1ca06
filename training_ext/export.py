"""Turn a trainer checkpoint into a clean model-only checkpoint that upstream ``build_sam2`` loads.

The trainer's ``checkpoint.pt`` holds the model, optimizer, loss and step state. ``export``
keeps only ``{"model": state_dict}`` (what ``sam2.build_sam._load_checkpoint`` reads), written
atomically, plus a ``<out>.json`` sidecar naming the model config and the Hydra overrides that
rebuild the same architecture (taken from the run's ``config.yaml``, recorded by
``training_ext.compose`` under ``vitplug_train.build_sam2``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"


def read_trainer_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The trainer checkpoint at ``path`` (tensors and plain containers only: ``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"trainer checkpoint '{path}' does not exist (expected <experiment>/checkpoints/checkpoint.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise ValueError(f"'{path}' is not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"'{path}' has no 'model' state dict; is it a training checkpoint from training_ext/upstream?")
    return ckpt


def run_build_info(ckpt_path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"config": ..., "overrides": [...]}`` from the run's ``config.yaml`` next to ``checkpoints/``."""
    import yaml

    config_yaml = Path(ckpt_path).expanduser().resolve().parent.parent / "config.yaml"
    if not config_yaml.is_file():
        return None
    with open(config_yaml) as f:
        cfg = yaml.safe_load(f) or {}
    info = (cfg.get("vitplug_train") or {}).get("build_sam2")
    return dict(info) if info else None


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        from sam2_vitplug.atomic import file_mode  # the umask's mode, not mkstemp's 0600

        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_checkpoint(ckpt_path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the model-only checkpoint ``out`` (``.pt`` or ``.safetensors``) and its sidecar.

    Returns the sidecar's content. Nothing is written when the input is bad or ``out`` exists
    without ``overwrite``.
    """
    out = Path(out).expanduser()
    if out.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"--out {out}: use a .pt, .pth or .safetensors file name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite to replace it")
    ckpt = read_trainer_checkpoint(ckpt_path)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    meta = {
        "source": str(Path(ckpt_path).expanduser().resolve()),
        "steps": ckpt.get("steps"),
        "epoch": ckpt.get("epoch"),
        "tensors": len(state),
        "build_sam2": run_build_info(ckpt_path),
    }
    if out.suffix == ".safetensors":
        from sam2_vitplug.safetensors_io import save_safetensors

        _atomic(out, lambda tmp: save_safetensors(state, tmp))
    else:
        _atomic(out, lambda tmp: torch.save({"model": state}, tmp))
    sidecar = out.with_name(out.name + SIDECAR_SUFFIX)
    _atomic(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    logger.info("wrote %s (%d tensors) and %s", out, len(state), sidecar)
    return meta


def build_exported(path: str | os.PathLike, *, device: str | torch.device, mode: str = "eval") -> torch.nn.Module:
    """Build the model of an exported ``.pt`` with upstream ``build_sam2`` (config from the sidecar)."""
    from sam2.build_sam import build_sam2

    path = Path(path).expanduser()
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise FileNotFoundError(f"'{sidecar}' is missing: it names the model config; re-export with sam2-vitplug export")
    info = json.loads(sidecar.read_text()).get("build_sam2")
    if not info:
        raise ValueError(f"'{sidecar}' has no build_sam2 entry (the run was not launched through training_ext)")
    if path.suffix == ".safetensors":
        raise ValueError("upstream build_sam2 reads .pt checkpoints; export to a .pt file to use build_exported")
    return build_sam2(info["config"], ckpt_path=str(path), device=str(device), mode=mode,
                      hydra_overrides_extra=list(info["overrides"]))
