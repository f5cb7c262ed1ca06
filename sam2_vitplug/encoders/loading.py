"""Load a ViT backbone from a preset name, a hub id, a local directory or a Meta ``.pth``.

All weight loading of the project goes through ``load_encoder``: it decides which source a
string names, never downloads when ``HF_HUB_OFFLINE=1``, never enables
``trust_remote_code`` unless asked, checks that the weights belong to the requested family,
and installs Meta's position-embedding interpolation where the weights were trained with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn

from .families import EncoderFamily
from .meta_checkpoint import IJepaWeights, has_checkpoint_suffix, split_weights_selector
from .presets import EncoderPreset
from .registry import find_preset, get_family, list_encoder_types
from .sources import META_FORMATS

logger = logging.getLogger(__name__)

PosInterp = Literal["meta", "hf"]
SourceKind = Literal["hub", "local", "meta-pth", "random"]


class EncoderNotAvailableError(OSError):
    """The weights are neither on disk nor downloadable (offline)."""


@dataclass
class LoadedEncoder:
    """A loaded transformers model and what it is."""

    model: nn.Module
    family: EncoderFamily
    source: SourceKind
    location: str
    preset: EncoderPreset | None = None

    @property
    def config(self):
        return self.model.config


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "org/name"; anything absolute, relative-dotted, home-based, deeper, or
    # ending like a checkpoint file is meant as a local path.
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.count("/") > 1
        or has_checkpoint_suffix(name)
        or os.sep != "/" and os.sep in name
    )


def _family_for(model_type: str, encoder_type: str | None, what: str) -> EncoderFamily:
    if encoder_type is not None:
        family = get_family(encoder_type)
        if family.upstream:
            raise ValueError(
                f"encoder type '{encoder_type}' is the upstream SAM2 trunk; it has no ViT to load. "
                "Use sam2's own Hiera configs (e.g. configs/sam2.1/sam2.1_hiera_l.yaml)."
            )
        if not family.accepts(model_type):
            raise ValueError(
                f"{what} is a '{model_type}' model but encoder_type='{encoder_type}' expects "
                f"{', '.join(family.model_types)}; pass the matching encoder type"
            )
        return family
    for name in list_encoder_types():
        family = get_family(name)
        if family.model_types and model_type in family.model_types:
            return family
    return get_family("vit")


def _meta_types() -> list[str]:
    return [n for n in list_encoder_types() if get_family(n).meta_checkpoint]


def _load_meta(path: Path, ijepa_weights: str | None, pos_interp: str) -> tuple[nn.Module, str | None]:
    """Convert a Meta DINOv2 / DINOv3 / I-JEPA file to its transformers model (family read from the keys)."""
    from .meta_checkpoint import read_meta_state_dict

    found = read_meta_state_dict(path, ijepa_weights)
    if found.family.name == "dinov3":
        from .meta_dinov3 import build_meta_dinov3

        return build_meta_dinov3(found.tensors, path), None
    if found.family.name == "ijepa":
        from .meta_ijepa import build_meta_ijepa

        if found.picked and ijepa_weights is None:
            logger.warning("I-JEPA checkpoint %s: using its '%s' weights (the default, what the paper evaluates; "
                           "append '#encoder' for the context encoder)", path, found.picked)
        elif found.picked:
            logger.info("I-JEPA checkpoint %s: using its '%s' weights", path, found.picked)
        return build_meta_ijepa(found.tensors, path, found.picked), found.picked
    from .meta_dinov2 import build_meta_dinov2

    return build_meta_dinov2(found.tensors, path, meta_pos_interp=pos_interp == "meta"), None


def _weights_selector(text: str, ijepa_weights: str | None) -> tuple[str, str | None]:
    """Split ``file.pth.tar#encoder`` into the path and the I-JEPA encoder to use; check the two ways agree."""
    name, selector = split_weights_selector(text)
    base, sep, unknown = name.rpartition("#")
    if sep and selector is None and os.path.isfile(os.path.expanduser(base)):
        raise ValueError(f"'{name}': unknown weights selector '#{unknown}'; an I-JEPA training checkpoint takes "
                         "'#target_encoder' (default) or '#encoder', other files take none")
    if selector is not None and ijepa_weights is not None and selector != ijepa_weights:
        raise ValueError(f"'{text}' selects '{selector}' but ijepa_weights='{ijepa_weights}'; give one of the two")
    choice = ijepa_weights or selector
    if choice is not None and not os.path.isfile(os.path.expanduser(name)):
        if os.path.exists(os.path.expanduser(name)) or find_preset(name) is not None or not _looks_like_path(name):
            raise ValueError(f"'{name}' is not a checkpoint file; the I-JEPA weights selector ('#{choice}' / "
                             "ijepa_weights) applies only to an I-JEPA .pth.tar training checkpoint")
    return name, choice


def _hub_error(hub_id: str, err: Exception) -> EncoderNotAvailableError:
    if _offline():
        msg = (
            f"encoder '{hub_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it; "
            f"download it where there is network (hf download {hub_id} --local-dir DIR) and pass the local "
            "directory DIR instead of the id"
        )
    else:
        msg = (
            f"could not load encoder '{hub_id}' from the Hugging Face hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); check the id, or pass a local directory "
            "holding config.json and the weights"
        )
    return EncoderNotAvailableError(msg)


def _from_config(config) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(config)


def _load_hf(location: str, *, random_init: bool, local: bool, revision: str | None, trust_remote_code: bool):
    from transformers import AutoConfig, AutoModel

    kwargs = {"trust_remote_code": trust_remote_code}
    if local:
        kwargs["local_files_only"] = True
    else:
        kwargs["revision"] = revision
    try:
        if random_init:
            return _from_config(AutoConfig.from_pretrained(location, **kwargs))
        return AutoModel.from_pretrained(location, **kwargs)
    except OSError as err:
        if local:
            raise ValueError(f"could not load the encoder in local directory '{location}': {err}") from err
        raise _hub_error(location, err) from None


def packaged_path(relative: str) -> Path:
    """The absolute path of a file shipped inside the ``sam2_vitplug`` package; FileNotFoundError if absent."""
    path = Path(__file__).resolve().parents[1] / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"packaged weights '{path}' are missing; reinstall sam2-vitplug from a full checkout (the file is in "
            "git), or regenerate it with `python tools/train_demo_model.py`"
        )
    return path


def _load_packaged(preset: EncoderPreset) -> nn.Module:
    """Build ``preset.arch`` and load its tensors (under ``key_prefix``) from the packaged safetensors."""
    from safetensors import safe_open
    from transformers import AutoConfig

    path = packaged_path(preset.package_file)
    with safe_open(str(path), framework="pt") as f:  # read only this encoder's tensors, not the whole model
        state = {k[len(preset.key_prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(preset.key_prefix)}
    model = _from_config(AutoConfig.for_model(preset.model_type, **dict(preset.arch)))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"'{path}' does not fit preset '{preset.name}': missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]} (under prefix '{preset.key_prefix}')")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def load_encoder(
    pretrained: str | os.PathLike,
    encoder_type: str | None = None,
    *,
    random_init: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
    pos_interp: PosInterp = "meta",
    ijepa_weights: IJepaWeights | None = None,
) -> LoadedEncoder:
    """Load a ViT and identify its family.

    Args:
        pretrained: a preset name (``dinov2_large``), a hub id (``facebook/dinov2-large``), a
            local directory with ``config.json`` + weights, or a Meta checkpoint: DINOv2 / DINOv3
            ``.pth``, I-JEPA ``.pth.tar`` (``path#encoder`` / ``path#target_encoder`` picks one of
            its encoders). The family of a Meta file is read from its keys.
        encoder_type: the expected family; inferred from ``config.model_type`` when None.
        random_init: build the architecture with random weights (benchmarks, tests). For a
            preset this needs no file at all; a Meta file gives its architecture, not its weights.
        revision: hub revision (hub ids only).
        trust_remote_code: forwarded to transformers; off by default.
        pos_interp: ``"meta"`` reproduces Meta's DINOv2 position-embedding interpolation for
            weights trained with it (default); ``"hf"`` keeps transformers' own rule.
    """
    if pos_interp not in ("meta", "hf"):
        raise ValueError(f"pos_interp must be 'meta' or 'hf', got {pos_interp!r}")
    name, ijepa_weights = _weights_selector(os.fspath(pretrained), ijepa_weights)
    preset = find_preset(name)
    if preset is not None:
        if encoder_type is not None and encoder_type != preset.encoder_type:
            raise ValueError(
                f"preset '{name}' is of encoder type '{preset.encoder_type}', not '{encoder_type}'; "
                f"drop encoder_type or pass encoder_type='{preset.encoder_type}'"
            )
        if random_init:
            from transformers import AutoConfig

            config = AutoConfig.for_model(preset.model_type, **dict(preset.arch))
            model, source, location = _from_config(config), "random", f"preset {name} (random weights)"
        elif preset.package_file:
            model, location = _load_packaged(preset), str(packaged_path(preset.package_file))
            source = "package"
        else:
            model = _load_hf(preset.hf_id, random_init=False, local=False, revision=preset.revision or revision,
                             trust_remote_code=trust_remote_code)
            source, location = "hub", preset.hf_id
    elif os.path.isdir(os.path.expanduser(name)):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"encoder directory '{path}' has no config.json; save the model there with "
                f"model.save_pretrained(dir), or pass a hub id or {META_FORMATS}"
            )
        model = _load_hf(str(path), random_init=random_init, local=True, revision=None,
                         trust_remote_code=trust_remote_code)
        source, location = ("random" if random_init else "local"), str(path)
    elif os.path.isfile(os.path.expanduser(name)):
        path = Path(name).expanduser()
        if not has_checkpoint_suffix(path.name):
            raise ValueError(
                f"'{path}' is a file but not a .pth/.pt/.pth.tar checkpoint; pass a directory with config.json, "
                f"a hub id, a preset name or {META_FORMATS}"
            )
        if encoder_type is not None and not get_family(encoder_type).meta_checkpoint:
            raise NotImplementedError(
                f"Meta-format checkpoints are converted only for encoder types whose key mapping is verified "
                f"against Meta's code ({', '.join(_meta_types())}); '{encoder_type}' is not one. Convert the "
                "weights to a transformers directory (save_pretrained) and pass that directory."
            )
        model, picked = _load_meta(path, ijepa_weights, pos_interp)
        source, location = "meta-pth", str(path) + (f"#{picked}" if picked else "")
        if random_init:  # the file's architecture (read from its tensors) with fresh random weights
            model, source = _from_config(model.config).eval(), "random"
    elif _looks_like_path(name):
        raise FileNotFoundError(
            f"encoder path '{name}' does not exist; pass an existing directory with config.json, {META_FORMATS}, "
            "a hub id (org/name) or a preset name (sam2-vitplug info lists them)"
        )
    else:
        model = _load_hf(name, random_init=random_init, local=False, revision=revision,
                         trust_remote_code=trust_remote_code)
        source, location = ("random" if random_init else "hub"), name

    model_type = model.config.model_type
    family = _family_for(model_type, encoder_type, f"'{name}'")
    if pos_interp == "meta" and model_type in family.meta_pos_interp_model_types:
        from .pos_embed import use_meta_pos_interpolation

        use_meta_pos_interpolation(model.embeddings)
    logger.info("loaded %s encoder '%s' from %s (%s)", family.name, name, location, source)
    from ..weights_audit import record_weights

    record_weights("encoder", model, location)
    return LoadedEncoder(model=model, family=family, source=source, location=location, preset=preset)
