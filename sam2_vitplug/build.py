"""Build SAM2 models from our configs and load official SAM2 weights around a new trunk.

``build_sam2_vit`` is upstream ``sam2.build_sam.build_sam2`` (which already finds our
configs through the Hydra plugin) followed by a *partial* load of an official SAM2
checkpoint: the prompt encoder, mask decoder and memory modules load unchanged, while
``image_encoder.trunk.*`` and ``image_encoder.neck.convs.*`` (whose shapes change with the
trunk) are skipped and counted. Upstream ``_load_checkpoint`` is strict and raises a bare
``RuntimeError()``, so it cannot do this.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

TRUNK_PREFIXES = ("image_encoder.trunk.", "image_encoder.neck.convs.")


@dataclass
class LoadReport:
    """What a partial checkpoint load did, by tensor name."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, excluded on purpose
    not_loaded: list[str] = field(default_factory=list)  # model tensors left as they were (excluded)

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)} checkpoint tensors under "
            f"{', '.join(TRUNK_PREFIXES)}; {len(self.not_loaded)} model tensors keep their own initialisation"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM2 checkpoint: ``.pt``/``.pth`` (``{"model": ...}`` or a flat state dict) or ``.safetensors``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for unreadable files
        raise ValueError(
            f"'{path}' is not a readable SAM2 checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors (or one under the key 'model')")
    return state


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in exclude)


def load_sam2_weights(
    model: nn.Module, ckpt_path: str | os.PathLike, *, exclude: Sequence[str] = TRUNK_PREFIXES
) -> LoadReport:
    """Load every tensor of ``ckpt_path`` except those under ``exclude`` into ``model``.

    Outside ``exclude`` the load is strict: a tensor missing from the checkpoint, an unexpected
    one, or a shape mismatch raises ``ValueError`` naming them, before ``model`` is changed.
    Pass ``exclude=()`` for a checkpoint trained with the same trunk (a full, strict load).
    """
    state = read_state_dict(ckpt_path)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for name, tensor in state.items():
        if _excluded(name, exclude):
            report.skipped.append(name)
        elif name not in own:
            unexpected.append(name)
        elif own[name].shape != tensor.shape:
            mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            to_load[name] = tensor
    missing = [n for n in own if not _excluded(n, exclude) and n not in state]
    if unexpected or mismatched or missing:
        def show(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "") or "none"

        raise ValueError(
            f"checkpoint '{ckpt_path}' does not fit this model outside {list(exclude)}: "
            f"missing {show(missing)}; unexpected {show(unexpected)}; shape mismatch {show(mismatched)}. "
            "Is it a SAM 2.1 checkpoint for the same upstream config (sam2.1_hiera_*)?"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.not_loaded = [n for n in own if _excluded(n, exclude)]
    logger.info("%s: %s", ckpt_path, report.summary())
    return report


def _build_then_load(
    upstream_builder: Any,
    config_file: str,
    sam2_ckpt: str | os.PathLike | None,
    device: str | torch.device,
    hydra_overrides_extra: Iterable[str],
    **kwargs: Any,
) -> nn.Module:
    from .sam2_presets import find_sam2_preset

    exclude: Sequence[str] = TRUNK_PREFIXES
    preset = find_sam2_preset(config_file)
    if preset is not None:  # a packaged model: its weights fit the whole model, trunk included
        config_file, exclude = preset.config, ()
        if sam2_ckpt is None:
            sam2_ckpt = preset.weights_path()
    # build on CPU (upstream would move to its default "cuda"), load, then move once
    model = upstream_builder(config_file, ckpt_path=None, device="cpu",
                             hydra_overrides_extra=list(hydra_overrides_extra), **kwargs)
    model.sam2_vitplug_load_report = (load_sam2_weights(model, sam2_ckpt, exclude=exclude)
                                      if sam2_ckpt is not None else None)
    return model.to(device)


def build_sam2_vit(
    config_file: str,
    sam2_ckpt: str | os.PathLike | None = None,
    *,
    device: str | torch.device,
    mode: str = "eval",
    hydra_overrides_extra: Iterable[str] = (),
    apply_postprocessing: bool = True,
) -> nn.Module:
    """Build ``config_file`` with upstream ``build_sam2`` and load ``sam2_ckpt`` around the trunk.

    ``config_file`` may also name a packaged model (``sam2_vit_demo``, see
    :mod:`sam2_vitplug.sam2_presets`): its weights then load by default, fully and strictly. The :class:`LoadReport` is kept on ``model.sam2_vitplug_load_report`` (None without a
    checkpoint). ``device`` is required: nothing here guesses CUDA.
    """
    from sam2.build_sam import build_sam2

    return _build_then_load(build_sam2, config_file, sam2_ckpt, device, hydra_overrides_extra,
                            mode=mode, apply_postprocessing=apply_postprocessing)


def build_sam2_vit_video_predictor(
    config_file: str,
    sam2_ckpt: str | os.PathLike | None = None,
    *,
    device: str | torch.device,
    mode: str = "eval",
    hydra_overrides_extra: Iterable[str] = (),
    apply_postprocessing: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Video-predictor twin of :func:`build_sam2_vit` (upstream ``build_sam2_video_predictor``)."""
    from sam2.build_sam import build_sam2_video_predictor

    return _build_then_load(build_sam2_video_predictor, config_file, sam2_ckpt, device, hydra_overrides_extra,
                            mode=mode, apply_postprocessing=apply_postprocessing, **kwargs)


def backbone_feature_sizes(image_size: int) -> list[tuple[int, int]]:
    """The (H, W) of the stride 4, 8 and 16 maps SAM2 uses at ``image_size``."""
    return [(image_size // s, image_size // s) for s in (4, 8, 16)]


def fit_predictor_to_model(predictor: Any) -> Any:
    """Make a ``SAM2ImagePredictor`` work at the model's ``image_size``.

    Upstream ``SAM2ImagePredictor.__init__`` hard-codes ``_bb_feat_sizes`` for 1024 px; this
    sets them from ``predictor.model.image_size``. Returns the predictor.
    """
    predictor._bb_feat_sizes = backbone_feature_sizes(int(predictor.model.image_size))
    return predictor


def make_image_predictor(model: nn.Module, **kwargs: Any):
    """``SAM2ImagePredictor(model, **kwargs)`` that works at any ``model.image_size``."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return fit_predictor_to_model(SAM2ImagePredictor(model, **kwargs))


def make_mask_generator(model: nn.Module, **kwargs: Any):
    """``SAM2AutomaticMaskGenerator(model, **kwargs)`` that works at any ``model.image_size``."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(model, **kwargs)
    fit_predictor_to_model(generator.predictor)
    return generator
