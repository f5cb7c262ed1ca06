"""What a ``fewshot run`` records about itself (``<out>.settings.json``), so a rerun resumes
only a run made with the same settings (docs/fewshot.md, "Resuming")."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence


def file_sha256(path: str | None) -> str | None:
    """The sha256 of a file's bytes, or None for no file."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_settings(cfg, images: Sequence[Any], matcher, sam2_model, *, bank: str, ann: str | None,
                 sam2_config: str | None, sam2_overrides: Sequence[str], extra: dict[str, Any] | None = None) -> dict:
    """Everything that changes what ``fewshot run`` writes, as JSON: a resumed run must match it.

    Weights are identified by their content (``weights_sha256``), not by path, so replaced
    weights at the same path do not resume; the image folder's location is not part of it.
    ``extra`` adds settings that live outside the config (e.g. the compute dtype)."""
    from omegaconf import OmegaConf

    from ..version import __version__
    from ..weights_audit import weights_sha256
    from .encoder import matcher_weights_sha256

    return {
        "sam2_vitplug": __version__,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "bank_sha256": file_sha256(bank),
        "images": [[e.image_id, e.file_name] for e in images],
        "ann_sha256": file_sha256(ann) if cfg.proposals.source == "ground_truth" else None,
        "matcher": {"identity": str(getattr(matcher, "identity", type(matcher).__name__)),
                    "input_size": int(matcher.input_size), "weights_sha256": matcher_weights_sha256(matcher)},
        "sam2": None if sam2_model is None else {
            "config": sam2_config, "overrides": list(sam2_overrides),
            "image_size": int(sam2_model.image_size), "weights_sha256": weights_sha256(sam2_model)},
        **(extra or {}),
    }
