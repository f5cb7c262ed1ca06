"""Read a Meta-format checkpoint file and decide which family's release layout it is.

Why one module: DINOv2 ``.pth``, DINOv3 ``.pth`` and I-JEPA ``.pth.tar`` files share the reading
rules (``torch.load(weights_only=True)``, training wrappers, DDP ``module.`` prefixes) but not
their keys. Telling them apart here, from the keys alone, lets ``load_encoder`` take any of
them without an ``encoder_type`` and lets a file that fits none get one error that names every
family tried and what each one missed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar")
IJepaWeights = Literal["target_encoder", "encoder"]
# The I-JEPA paper (appendix A.1) evaluates the target (EMA) encoder, so it is the default.
IJEPA_WEIGHTS: tuple[str, ...] = ("target_encoder", "encoder")
# Wrappers under which training / teacher checkpoints nest the backbone weights.
_NESTING_KEYS = ("teacher", "model", "state_dict")
# Top-level keys that only a training checkpoint has.
_TRAINING_KEYS = ("opt", "optimizer", "optimizer_state_dict", "scaler", "lr_scheduler", "scheduler", "epoch",
                  "iteration", "loss")
_BLOCK = re.compile(r"^blocks\.(\d+\.)?\d+\.")


@dataclass(frozen=True)
class FamilyLayout:
    """The keys that identify one family's Meta release layout."""

    name: str  # the encoder type
    title: str
    required: tuple[str, ...]  # plus at least one ``blocks.<i>.*`` key
    forbidden: tuple[str, ...]  # keys another family has and this one never does


LAYOUTS = (
    FamilyLayout("dino", "DINOv2", ("cls_token", "pos_embed", "patch_embed.proj.weight"), ("rope_embed.periods",)),
    FamilyLayout("dinov3", "DINOv3", ("cls_token", "rope_embed.periods", "patch_embed.proj.weight"), ("pos_embed",)),
    FamilyLayout("ijepa", "I-JEPA", ("pos_embed", "patch_embed.proj.weight"), ("cls_token",)),
)


@dataclass
class MetaStateDict:
    """A backbone state dict read from a Meta file, and where in the file it was."""

    tensors: dict[str, Tensor]
    family: FamilyLayout
    picked: str | None = None  # the I-JEPA sub-dict used (``target_encoder`` / ``encoder``)


def has_checkpoint_suffix(name: str) -> bool:
    return str(name).endswith(CHECKPOINT_SUFFIXES)


def split_weights_selector(name: str) -> tuple[str, str | None]:
    """``"ckpt.pth.tar#encoder"`` -> ``("ckpt.pth.tar", "encoder")``; other strings unchanged."""
    base, sep, choice = str(name).rpartition("#")
    if sep and choice in IJEPA_WEIGHTS:
        return base, choice
    return str(name), None


def sample_keys(keys: Any, n: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)} keys)"


def read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU (memory-mapped when the format allows); FileNotFoundError /
    one-line ValueError otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        try:  # memory-mapped: a 7B file is not held twice in memory while it is converted
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) torch.save format
    except Exception as exc:  # torch raises many types for bad files (zip, pickle, EOF, ...)
        detail = str(exc).strip().split(". ")[0][:200]
        raise ValueError(
            f"{path} is not a torch checkpoint that torch.load(weights_only=True) can read "
            f"({type(exc).__name__}: {detail})"
        ) from exc


def _has_tensors(obj: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Tensor) for v in obj.values())


def _training_keys(obj: Any) -> list[str]:
    return [k for k in _TRAINING_KEYS if isinstance(obj, Mapping) and k in obj]


def _pick_ijepa(obj: Mapping[str, Any], choice: str | None, path: Path) -> tuple[Mapping[str, Any], str | None]:
    """The I-JEPA training dict ``{'encoder', 'target_encoder', 'predictor', 'opt', ...}`` -> one encoder."""
    available = [k for k in IJEPA_WEIGHTS if isinstance(obj.get(k), Mapping)]
    if not available:
        if choice is not None:
            raise ValueError(
                f"{path}: '#{choice}' selects an encoder of an I-JEPA training checkpoint, but this file has no "
                f"'encoder'/'target_encoder' entries (top-level keys {sample_keys(obj.keys())}); drop the selector"
            )
        return obj, None
    picked = choice or IJEPA_WEIGHTS[0]
    if picked not in available:
        raise ValueError(
            f"{path} has no '{picked}' weights (it holds {', '.join(available)}); select one of them with "
            f"'{path}#{available[0]}'"
        )
    return obj[picked], picked


def _unwrap(obj: Any, path: Path, choice: str | None) -> tuple[dict[str, Tensor], str | None]:
    """Find the backbone tensors: I-JEPA encoders, DINOv2 ``teacher``/``model`` wrappers, DDP prefixes."""
    picked = None
    if isinstance(obj, Mapping):
        obj, picked = _pick_ijepa(obj, choice, path)
    for _ in range(3):
        if isinstance(obj, Mapping) and not _has_tensors(obj):
            inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not contain a state dict (got {type(obj).__name__})")

    sd: dict[str, Tensor] = {}
    has_backbone = any(str(k).startswith(("backbone.", "module.backbone.")) for k in obj)
    for key, value in obj.items():
        key = str(key)
        if key.startswith("module."):  # DistributedDataParallel
            key = key[len("module."):]
        if has_backbone:
            # DINOv2 teacher checkpoints also carry dino_head / ibot_head weights; only the backbone is ours.
            if not key.startswith("backbone."):
                continue
            key = key[len("backbone."):]
        if isinstance(value, Tensor):
            sd[key] = value
    return sd, picked


def _missing(layout: FamilyLayout, sd: Mapping[str, Tensor]) -> list[str]:
    missing = [k for k in layout.required if k not in sd]
    if not any(_BLOCK.match(k) for k in sd):
        missing.append("blocks.<i>.*")
    return missing


def detect_layout(sd: Mapping[str, Tensor], path: Path, top_level: Any = None) -> FamilyLayout:
    """The one family whose required keys ``sd`` has; ValueError naming every family tried otherwise."""
    fits = [lay for lay in LAYOUTS if not _missing(lay, sd) and not any(k in sd for k in lay.forbidden)]
    if len(fits) == 1:
        return fits[0]
    tried = "; ".join(
        f"{lay.title} needs {', '.join(lay.required)}, blocks.<i>.* "
        + (f"(missing {', '.join(_missing(lay, sd))})" if _missing(lay, sd) else
           f"(but has {', '.join(k for k in lay.forbidden if k in sd)}, which {lay.title} never has)")
        for lay in LAYOUTS
    )
    if any(k.startswith(("downsample_layers.", "stages.")) for k in sd):
        raise ValueError(f"{path} looks like a DINOv3 ConvNeXt backbone (keys {sample_keys(sd.keys(), 3)}); "
                         "sam2-vitplug plugs in ViTs only: use a DINOv3 ViT checkpoint (dinov3_vit*16*.pth)")
    training = _training_keys(top_level)
    lead = (f"{path} is a training checkpoint (it has {', '.join(repr(k) for k in training)}) whose model weights "
            "are in no Meta release layout sam2-vitplug knows" if training else
            f"{path} is not a Meta DINOv2, DINOv3 or I-JEPA checkpoint")
    raise ValueError(
        f"{lead}: tried {tried}; found keys {sample_keys(sd.keys())}. Pass the backbone's own state dict "
        "(torch.save(backbone.state_dict(), 'backbone.pth')) or a transformers directory (save_pretrained)"
    )


def read_meta_state_dict(path: str | Path, ijepa_weights: str | None = None) -> MetaStateDict:
    """Read ``path`` and return its backbone tensors with the family they belong to.

    ``ijepa_weights`` picks ``target_encoder`` (default) or ``encoder`` of an I-JEPA training
    checkpoint; for any other file it must be None.
    """
    if ijepa_weights is not None and ijepa_weights not in IJEPA_WEIGHTS:
        raise ValueError(f"ijepa_weights must be one of {', '.join(IJEPA_WEIGHTS)}, got {ijepa_weights!r}")
    path = Path(path)
    obj = read_checkpoint(path)
    sd, picked = _unwrap(obj, path, ijepa_weights)
    layout = detect_layout(sd, path, top_level=obj)
    if picked is not None and layout.name != "ijepa":
        raise ValueError(f"{path}: the '{picked}' entry is a {layout.title} state dict, not I-JEPA; "
                         "load it without a '#encoder' selector")
    return MetaStateDict(sd, layout, picked)


def split_fused_qkv(prefix: str, key: str, value: Tensor, hidden: int, *, key_bias: bool = True) -> dict[str, Tensor]:
    """Meta's fused ``blocks.i.attn.qkv.{weight,bias}`` -> ``<prefix>attention.{q,k,v}_proj.*``.

    Every Meta ViT (DINOv2, DINOv3, I-JEPA) lays the fused output out as ``[q; k; v]``, each
    head-major. ``key_bias=False`` drops the k bias (DINOv3 release files mask it: Meta's forward
    never adds it)."""
    kind = key.rsplit(".", 1)[1]
    if value.shape[0] != 3 * hidden:
        raise ValueError(f"{key} has shape {tuple(value.shape)}, expected first dim {3 * hidden}")
    q, k, v = value.chunk(3, dim=0)
    out = {f"{prefix}attention.q_proj.{kind}": q.clone(), f"{prefix}attention.v_proj.{kind}": v.clone()}
    if kind == "weight" or key_bias:
        out[f"{prefix}attention.k_proj.{kind}"] = k.clone()
    return out


def default_layer_scales(out: dict[str, Tensor], layer_prefix: str, layers: int, hidden: int,
                         dtype: torch.dtype) -> None:
    """All-ones ``lambda1`` for blocks saved without LayerScale: an identity, since transformers
    always has the layer."""
    for i in range(layers):
        for ls in ("layer_scale1", "layer_scale2"):
            out.setdefault(f"{layer_prefix}{i}.{ls}.lambda1", torch.ones(hidden, dtype=dtype))


def assign_converted(model_cls: type, config: Any, converted: dict[str, Tensor], path: Path, title: str,
                     rebuild: tuple[str, ...] = ()) -> Any:
    """``model_cls(config)`` with exactly ``converted`` as its weights, in eval mode.

    Built on the meta device, so no random init of (up to 6.7B) parameters that are overwritten
    anyway; ``rebuild`` names parameter-free submodules (holding non-persistent buffers, which no
    state dict carries) that are constructed again on CPU. Missing/unexpected keys -> ValueError.
    """
    with torch.device("meta"):
        model = model_cls(config)
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        expected = set(model.state_dict().keys())
        missing = sorted(expected - converted.keys())
        unexpected = sorted(converted.keys() - expected)
        raise ValueError(
            f"{path}: converted {title} weights do not fit {model_cls.__name__} "
            f"(missing: {sample_keys(missing, 20)}; unexpected: {sample_keys(unexpected, 20)}; "
            f"torch: {str(exc).strip().splitlines()[-1][:500]})"
        ) from exc
    for name in rebuild:
        setattr(model, name, type(getattr(model, name))(config))
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"{path}: tensors left uninitialised after loading: {sample_keys(leftover)}")
    return model.eval()
