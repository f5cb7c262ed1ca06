"""A frozen ViT + a trainable segmentation head, built from ``configs/heads/<name>.yaml``,
and the checkpoint format that makes a trained head reloadable on its own."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_target
from ..encoders import find_preset
from ..encoders.presets import IMAGENET_MEAN, IMAGENET_STD
from ..modeling import ViTTrunkMultiScale
from .losses import Mask2FormerLoss, pixel_cross_entropy

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sam2_vitplug.seg/1"


def head_names() -> list[str]:
    """Head names users can type: the YAML files in ``sam2_vitplug.configs.heads``."""
    return sorted(p.name[:-5] for p in resources.files("sam2_vitplug.configs.heads").iterdir() if p.name.endswith(".yaml"))


def head_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The OmegaConf config of head ``name`` with ``key=value`` dotlist overrides applied."""
    from omegaconf import OmegaConf

    names = head_names()
    if name not in names:
        raise KeyError(f"unknown head '{name}'; available: {', '.join(names)}")
    base = OmegaConf.create((resources.files("sam2_vitplug.configs.heads") / f"{name}.yaml").read_text())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"head overrides must be key=value (e.g. head.channels=256), got {bad[0]!r}")
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


# constructor arguments the builder sets itself; a --head-opt cannot override them
_BUILDER_SET = {"self", "in_channels", "num_classes", "pretrained", "encoder_type", "freeze_vit", "random_init",
                "args", "kwargs"}


def check_head_overrides(config: "SegModelConfig") -> None:
    """Every ``--head-opt section.key=value`` names an argument of the head, the backbone
    (``ViTTrunkMultiScale``) or the loss, so a typo is one clear line before anything is
    built rather than a TypeError from the constructor."""
    import inspect

    from hydra.utils import get_class

    cfg = head_config(config.head, config.head_overrides)
    targets: dict[str, Any] = {"head": get_class(cfg.head._target_), "backbone": ViTTrunkMultiScale}
    if "loss" in cfg:
        targets["loss"] = Mask2FormerLoss
    for override in config.head_overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        section, _, name = key.partition(".")
        name = name.split(".")[0]
        if section not in targets:
            raise ValueError(f"--head-opt {override}: '{section}' is not a section of the {config.head} head's config; "
                             f"use {', '.join(s + '.KEY' for s in targets)}")
        options = sorted(set(inspect.signature(targets[section].__init__).parameters) - _BUILDER_SET)
        if name not in options:
            raise ValueError(f"--head-opt {override}: the {config.head} {section} has no option '{name}'; "
                             f"options: {', '.join(options)}")


@dataclass
class SegModelConfig:
    """Everything needed to rebuild a model (stored in every checkpoint)."""

    head: str
    encoder: str
    num_classes: int
    image_size: int = 512
    encoder_type: str | None = None
    random_init: bool = False
    head_overrides: list[str] = field(default_factory=list)
    class_names: list[str] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= 255:
            raise ValueError(f"num_classes must be in 1..255 (255 is the ignore label), got {self.num_classes}")
        if self.image_size <= 0 or self.image_size % 16:
            raise ValueError(f"image_size must be a positive multiple of 16, got {self.image_size}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.mean is None or self.std is None:
            preset = find_preset(self.encoder)
            self.mean = tuple(preset.mean) if preset else IMAGENET_MEAN
            self.std = tuple(preset.std) if preset else IMAGENET_STD

    @property
    def names(self) -> list[str]:
        return list(self.class_names) if self.class_names else [f"class_{i}" for i in range(self.num_classes)]


class SegModel(nn.Module):
    """Frozen ViT (no gradient, eval mode, features under ``no_grad``) + trainable head.

    ``trunk`` is a :class:`ViTTrunkMultiScale` with ``freeze_vit=True``; heads that read the
    pyramid (``head.input == "pyramid"``) train ``trunk.pyramid`` with them, the linear head
    reads the raw ViT maps and leaves the pyramid frozen and unused.
    """

    def __init__(self, trunk: ViTTrunkMultiScale, head: nn.Module, config: SegModelConfig, loss: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.config = config
        self.criterion = loss
        if head.input == "vit":
            self.trunk.pyramid.requires_grad_(False)

    @torch.no_grad()
    def vit_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` normalised images -> four stride-16 ViT maps (frozen, no graph)."""
        self.trunk.vit.eval()
        return [m.detach() for m in self.trunk.forward_vit_maps(images)]

    def forward_features(self, maps: list[torch.Tensor]):
        if self.head.input == "pyramid":
            dtype = self.trunk.pyramid.to_s16.weight.dtype
            return self.head(self.trunk.pyramid([m.to(dtype) for m in maps]))
        return self.head(maps)

    def forward(self, images: torch.Tensor | None = None, maps: list[torch.Tensor] | None = None):
        """Head outputs from images ``(B, 3, H, W)`` or from precomputed ViT ``maps``
        (cached features); one entry point so DDP sees every trainable call."""
        if (images is None) == (maps is None):
            raise ValueError("pass exactly one of images or maps")
        return self.forward_features(self.vit_features(images) if maps is None else maps)

    def scores(self, outputs, size: tuple[int, int]) -> torch.Tensor:
        """Head outputs -> per-class scores ``(B, K, H, W)`` at ``size`` (argmax = label)."""
        if isinstance(outputs, dict):
            from .mask2former import Mask2FormerHead

            outputs = Mask2FormerHead.semantic_scores(outputs["class_logits"], outputs["mask_logits"])
        return F.interpolate(outputs.float(), size=size, mode="bilinear", align_corners=False)

    def loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        if self.criterion is not None:
            return self.criterion(outputs, labels)
        return pixel_cross_entropy(outputs, labels)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything except the frozen ViT weights (unless they are random: then they are
        part of the model and must be saved to reproduce it)."""
        state = self.state_dict()
        if self.config.random_init:
            return state
        return {k: v for k, v in state.items() if not k.startswith("trunk.vit.")}


def build_seg_model(config: SegModelConfig, *, device: str | torch.device = "cpu") -> SegModel:
    """Build the frozen trunk and the head named by ``config.head``; head sizes come from
    the trunk (``feature_info`` / ``embed_dim``)."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    cfg = head_config(config.head, config.head_overrides)
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    trunk = ViTTrunkMultiScale(config.encoder, config.encoder_type, freeze_vit=True, random_init=config.random_init,
                               **backbone)
    head_cls = get_class(cfg.head._target_)
    if getattr(head_cls, "input", None) not in ("vit", "pyramid"):
        raise TypeError(f"{cfg.head._target_} must define input = 'vit' or 'pyramid'")
    if head_cls.input == "vit":
        in_channels = [trunk.embed_dim] * 4
    else:
        in_channels = [int(f["num_chs"]) for f in trunk.feature_info]
    head = instantiate(cfg.head, in_channels=in_channels, num_classes=config.num_classes, _convert_="all")
    loss = None
    if "loss" in cfg:
        loss = Mask2FormerLoss(config.num_classes, **OmegaConf.to_container(cfg.loss, resolve=True))
    model = SegModel(trunk, head, config, loss)
    return model.to(device)


def save_checkpoint(path: str | os.PathLike, model: SegModel, **extra: Any) -> None:
    """Atomically write ``{"format", "config", "model", **extra}`` with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = model.module if hasattr(model, "module") else model
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(module.config),
               "model": {k: v.detach().cpu() for k, v in module.trainable_state_dict().items()}, **extra}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)


CHECKPOINT_KEYS = ("format", "config", "model")


def _unreadable_reason(path: Path, err: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words: torch's own messages run to several lines."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(1)
    if head != b"\x80" and not zipfile.is_zipfile(path):
        if head == b"P":  # a zip's local header starts with PK: the end (central directory) is missing
            return "it is truncated (the zip archive has no end), probably from an interrupted copy"
        return "it is not a torch file (neither a zip archive nor a pickle)"
    first = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
    return f"it is truncated or corrupt ({type(err).__name__}: {first[:120]})"


def read_checkpoint(path: str | os.PathLike, flag: str = "--checkpoint") -> dict[str, Any]:
    """Load a ``seg train`` checkpoint (``weights_only``); a missing, empty, truncated or foreign
    file raises one ValueError/FileNotFoundError line naming it, never torch's traceback."""
    path = Path(path)
    hint = "pass a last.pt / best.pt / epoch_N.pt written by `sam2-vitplug seg train`"
    if not path.is_file():
        raise FileNotFoundError(f"{flag} '{path}' does not exist; {hint}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{flag} '{path}' is empty (0 bytes), probably from an interrupted copy; {hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, IndexError, ...
        raise ValueError(f"{flag} '{path}' ({size} bytes) cannot be read as a torch checkpoint: "
                         f"{_unreadable_reason(path, err)}; {hint}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{flag} '{path}' is not a segmentation-head checkpoint (format {CHECKPOINT_FORMAT}); {hint}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise ValueError(f"{flag} '{path}' lacks {missing or 'a valid config/model'}; {hint}")
    return ckpt


def load_seg_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                   ckpt: dict[str, Any] | None = None) -> SegModel:
    """Rebuild the model stored in a checkpoint and load its weights (strict on the head)."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    cfg = dict(ckpt["config"])
    for key in ("mean", "std"):
        if cfg.get(key) is not None:
            cfg[key] = tuple(cfg[key])
    model = build_seg_model(SegModelConfig(**cfg), device="cpu")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    missing = [k for k in missing if not k.startswith("trunk.vit.") or model.config.random_init]
    if missing or unexpected:
        raise ValueError(f"checkpoint '{path}' does not fit its own config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.to(device)
