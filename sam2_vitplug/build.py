"""Build SAM2 models from our configs and load SAM2 checkpoints into them, checked by name.

``build_sam2_vit`` is upstream ``sam2.build_sam.build_sam2`` (which already finds our configs
through the Hydra plugin) followed by :func:`load_sam2_weights`. A checkpoint whose trunk is
the model's own architecture (an upstream Hiera config with its official checkpoint, or a
checkpoint that ``training_ext``/``export`` wrote for a ViT-trunk model) loads completely and
strictly. Only when the trunks differ (a ``ViTTrunkMultiScale`` model with an official Hiera
checkpoint) are ``image_encoder.trunk.*`` and ``image_encoder.neck.convs.*`` left out, and the
:class:`LoadReport` says so. Upstream ``_load_checkpoint`` is strict and raises a bare
``RuntimeError()``, so it can do neither.
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
# the seed of the random initialisation that a build does under its own, forked RNG, so two
# processes building the same model get the same tensors wherever a checkpoint supplies none
INIT_SEED = 0


@dataclass
class LoadReport:
    """What a checkpoint load did, by tensor name, and why anything was left out."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, excluded on purpose
    not_loaded: list[str] = field(default_factory=list)  # model tensors left as they were (excluded)
    exclude: tuple[str, ...] = ()
    reason: str = ""  # why ``exclude`` was chosen ("" when the caller passed it)

    @property
    def complete(self) -> bool:
        """Every model tensor came from the checkpoint and every checkpoint tensor was used."""
        return not self.skipped and not self.not_loaded

    def summary(self) -> str:
        if self.complete:
            return f"loaded all {len(self.loaded)} tensors (complete, strict load){self._why()}"
        return (
            f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)} checkpoint tensors under "
            f"{', '.join(self.exclude)}{self._why()}; {len(self.not_loaded)} model tensors keep their own "
            "initialisation"
        )

    def _why(self) -> str:
        return f": {self.reason}" if self.reason else ""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a SAM2 checkpoint: ``.pt``/``.pth`` (``{"model": ...}`` or a flat state dict) or ``.safetensors``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"SAM2 checkpoint '{path}' is empty (0 bytes); download or copy it again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for unreadable files
        first = (str(err).splitlines() or [""])[0][:200]
        raise ValueError(
            f"'{path}' is not a readable SAM2 checkpoint ({type(err).__name__}{': ' + first if first else ''}); "
            "is the file complete?"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors (or one under the key 'model')")
    return state


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in exclude)


def model_trunk_kind(model: nn.Module) -> str:
    """``hiera`` (upstream's trunk), ``vit`` (:class:`ViTTrunkMultiScale`) or the trunk's class name."""
    trunk = getattr(getattr(model, "image_encoder", None), "trunk", None)
    if trunk is None:
        return "none"
    from sam2.modeling.backbones.hieradet import Hiera

    from .modeling.trunk import ViTTrunkMultiScale

    if isinstance(trunk, Hiera):
        return "hiera"
    if isinstance(trunk, ViTTrunkMultiScale):
        return "vit"
    return type(trunk).__name__


def checkpoint_trunk_kind(names: Iterable[str]) -> str:
    """The trunk architecture a SAM2 state dict was saved from, read off its tensor names.

    ``hiera`` holds ``image_encoder.trunk.pos_embed_window`` (every upstream Hiera has it),
    ``vit`` holds ``image_encoder.trunk.vit.*``; ``none`` has no trunk tensor; else ``unknown``.
    """
    trunk = [n for n in names if n.startswith("image_encoder.trunk.")]
    if not trunk:
        return "none"
    if "image_encoder.trunk.pos_embed_window" in trunk:
        return "hiera"
    if any(n.startswith("image_encoder.trunk.vit.") for n in trunk):
        return "vit"
    return "unknown"


def choose_exclude(model: nn.Module, names: Iterable[str]) -> tuple[tuple[str, ...], str]:
    """What to leave out of a load, and why: nothing unless the trunks are different architectures.

    A ViT-trunk model with a Hiera checkpoint keeps its own trunk (the ViT from its pretrained
    source) and neck input convs (their channels follow the trunk). A Hiera model with a
    checkpoint of another trunk is refused: its trunk would stay random.
    """
    mine, theirs = model_trunk_kind(model), checkpoint_trunk_kind(names)
    if mine == "vit" and theirs == "hiera":
        return TRUNK_PREFIXES, ("the checkpoint's trunk is Hiera and the model's is a ViT, so the ViT keeps its "
                                "pretrained weights and the pyramid and neck input convs their initialisation")
    if mine == "hiera" and theirs == "vit":
        raise ValueError(
            "the model's trunk is Hiera but the checkpoint holds a ViT trunk (image_encoder.trunk.vit.*); its "
            "Hiera trunk would stay random. Build the config the checkpoint was trained with, or pass "
            "exclude=TRUNK_PREFIXES to load the rest anyway"
        )
    return (), (f"the checkpoint's trunk is the model's own architecture ({mine})" if theirs == mine else "")


def load_sam2_weights(
    model: nn.Module, ckpt_path: str | os.PathLike, *, exclude: Sequence[str] | None = None
) -> LoadReport:
    """Load every tensor of ``ckpt_path`` into ``model``, except those under ``exclude``.

    ``exclude=None`` (default) chooses with :func:`choose_exclude`: a complete, strict load
    unless the checkpoint's trunk is another architecture than the model's. ``exclude=()``
    forces a complete load, ``exclude=TRUNK_PREFIXES`` forces the trunk and neck convs out.
    Outside ``exclude`` the load is strict: a tensor missing from the checkpoint, an unexpected
    one, or a shape mismatch raises ``ValueError`` naming them, before ``model`` is changed.
    """
    state = read_state_dict(ckpt_path)
    exclude, reason = choose_exclude(model, state) if exclude is None else (tuple(exclude), "")
    own = model.state_dict()
    report = LoadReport(exclude=exclude, reason=reason)
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

        where = f" outside {list(exclude)}" if exclude else ""
        raise ValueError(
            f"checkpoint '{ckpt_path}' does not fit this model{where} (model trunk {model_trunk_kind(model)}, "
            f"checkpoint trunk {checkpoint_trunk_kind(state)}): missing {show(missing)}; unexpected "
            f"{show(unexpected)}; shape mismatch {show(mismatched)}. Is it a checkpoint of the same config "
            "(an official one for sam2.1_hiera_*, or one trained with this config)?"
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
    exclude: Sequence[str] | None = None,
    init_seed: int | None = INIT_SEED,
    **kwargs: Any,
) -> nn.Module:
    from .sam2_presets import find_sam2_preset
    from .weights_audit import record_weights

    preset = find_sam2_preset(config_file)
    if preset is not None:  # a packaged model: its weights fit the whole model, trunk included
        config_file = preset.config
        if sam2_ckpt is None:
            sam2_ckpt = preset.weights_path()
    # build on CPU (upstream would move to its default "cuda"), load, then move once
    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        model = upstream_builder(config_file, ckpt_path=None, device="cpu",
                                 hydra_overrides_extra=list(hydra_overrides_extra), **kwargs)
    model.sam2_vitplug_load_report = (load_sam2_weights(model, sam2_ckpt, exclude=exclude)
                                      if sam2_ckpt is not None else None)
    record_weights("sam2", model, str(sam2_ckpt) if sam2_ckpt is not None else f"{config_file} (no checkpoint)")
    return model.to(device)


def build_sam2_vit(
    config_file: str,
    sam2_ckpt: str | os.PathLike | None = None,
    *,
    device: str | torch.device,
    mode: str = "eval",
    hydra_overrides_extra: Iterable[str] = (),
    apply_postprocessing: bool = True,
    exclude: Sequence[str] | None = None,
    init_seed: int | None = INIT_SEED,
) -> nn.Module:
    """Build ``config_file`` with upstream ``build_sam2`` and load ``sam2_ckpt`` into it.

    ``config_file`` may also name a packaged model (``sam2_vit_demo``, see
    :mod:`sam2_vitplug.sam2_presets`): its weights then load by default. ``exclude`` is passed
    to :func:`load_sam2_weights` (None: complete and strict unless the checkpoint's trunk is
    another architecture). Tensors no checkpoint supplies are initialised under ``init_seed``
    (None: the global RNG, as upstream), so every process builds the same model. The
    :class:`LoadReport` is kept on ``model.sam2_vitplug_load_report`` (None without a
    checkpoint). ``device`` is required: nothing here guesses CUDA.
    """
    from sam2.build_sam import build_sam2

    return _build_then_load(build_sam2, config_file, sam2_ckpt, device, hydra_overrides_extra, exclude, init_seed,
                            mode=mode, apply_postprocessing=apply_postprocessing)


def build_sam2_vit_video_predictor(
    config_file: str,
    sam2_ckpt: str | os.PathLike | None = None,
    *,
    device: str | torch.device,
    mode: str = "eval",
    hydra_overrides_extra: Iterable[str] = (),
    apply_postprocessing: bool = True,
    exclude: Sequence[str] | None = None,
    init_seed: int | None = INIT_SEED,
    **kwargs: Any,
) -> nn.Module:
    """Video-predictor twin of :func:`build_sam2_vit` (upstream ``build_sam2_video_predictor``)."""
    from sam2.build_sam import build_sam2_video_predictor

    return _build_then_load(build_sam2_video_predictor, config_file, sam2_ckpt, device, hydra_overrides_extra,
                            exclude, init_seed, mode=mode, apply_postprocessing=apply_postprocessing, **kwargs)


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
