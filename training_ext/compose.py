"""Compose a training overlay with the command line's overrides into the config upstream runs.

Steps (each a small function): find the overlay's name on Hydra's search path; compose it once
to learn its model option; switch the model option when ``--encoder-type`` changes the trunk
kind (ViT <-> Hiera); compose again with every override; then post-process the result:

* ``trainer.model`` = top-level ``model`` (the model config, as ``build_sam2`` reads it)
  merged with ``trainer.model`` (``SAM2Train``'s training-only keys);
* ``trainer._target_`` -> :class:`training_ext.trainer.CPUTrainer` when ``accelerator: cpu``;
* ``--sam2-ckpt`` -> upstream's ``model_weight_initializer`` with ``CkptExcludeKernel``;
* ``vitplug_train.build_sam2`` records the model config name and overrides that rebuild the
  trained model with upstream ``build_sam2`` (used by ``sam2-vitplug export``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from .checks import check_checkpoint_file, check_dataset_paths
from .flags import HIERA, EncoderFlags, check_dtype_on_device, encoder_overrides

logger = logging.getLogger(__name__)

UPSTREAM_TRAINER = "training.trainer.Trainer"
CPU_TRAINER = "training_ext.trainer.CPUTrainer"
# tensors a swapped trunk changes; the rest of an official SAM 2.1 checkpoint loads unchanged
SWAPPED_TRUNK_KEYS = ("image_encoder.trunk.*", "image_encoder.neck.convs.*")
ACCELERATORS = ("cuda", "cpu")


@dataclass
class LaunchRequest:
    """Everything the command line says about the config (launch flags stay with upstream)."""

    config: str
    overrides: list[str] = field(default_factory=list)
    flags: EncoderFlags = field(default_factory=EncoderFlags)
    device: str | None = None
    sam2_ckpt: str | None = None
    init_ckpt: str | None = None
    experiment_dir: str | None = None
    check_paths: bool = True  # dataset folders and checkpoint contents (off for --print-config)


def _package_configs_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("sam2_vitplug.configs")))


def config_name(config: str) -> str:
    """The Hydra name of ``config``: a name on the search path (``training/tiny_cpu.yaml``,
    ``configs/sam2.1_training/...``) or a path to a file under this package's ``configs/``."""
    path = Path(config).expanduser()
    root = _package_configs_dir().resolve()
    if path.is_file():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
        raise ValueError(
            f"--config {config} is outside the config search path ({root}, pkg://sam2): Hydra cannot resolve its "
            "defaults from there. Put the overlay under configs/training/ (it is installed with the package) and "
            "pass configs/training/<name>.yaml or training/<name>.yaml"
        )
    name = config[len("configs/"):] if config.startswith("configs/training/") else config
    if not name.endswith(".yaml"):
        name += ".yaml"
    return name


def _compose(name: str, overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    GlobalHydra.instance().clear()
    initialize_config_module("sam2", version_base="1.2")
    try:
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except MissingConfigException as err:
        raise FileNotFoundError(
            f"training config '{name}' was not found on Hydra's search path (pkg://sam2, pkg://sam2_vitplug.configs); "
            "available overlays: " + ", ".join(list_overlays())
        ) from err
    except (ConfigCompositionException, OverrideParseException) as err:  # e.g. a mistyped key=value
        first = (str(err).splitlines() or [type(err).__name__])[0]
        hint = ("; a new key needs a leading + (+key=value); see the keys with --print-config"
                if "Could not override" in first else "")
        raise ValueError(f"{first.rstrip('.')} (in '{name}'){hint}") from err


def list_overlays() -> list[str]:
    """Training overlays shipped in ``configs/training`` (names usable with ``--config``)."""
    root = _package_configs_dir() / "training"
    return sorted(f"configs/training/{p.name}" for p in root.glob("*.yaml"))


def default_accelerator() -> str:
    """``cuda`` if available, else ``cpu`` (upstream's Trainer supports only these two)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_accelerator(device: str | None) -> str | None:
    """Map ``--device`` to the trainer's ``accelerator``; None keeps the overlay's choice.
    The device itself is checked by the package's one parser (``sam2_vitplug.devices``)."""
    from sam2_vitplug.devices import parse_device

    if device is None:
        return None
    kind = device.split(":")[0].strip().lower()
    if kind not in ACCELERATORS:
        raise ValueError(f"--device {device}: upstream training.trainer.Trainer runs on cuda or cpu only")
    return parse_device(device).split(":")[0]


def _model_choice_key(cfg: DictConfig, option: str) -> str | None:
    for key, value in cfg.hydra.runtime.choices.items():
        if value == option and key.split("@")[0].endswith("model"):
            return key
    return None


def _switch_model_option(name: str, request: LaunchRequest) -> list[str]:
    """Overrides that select the model option matching ``--encoder-type``'s trunk kind."""
    if request.flags.encoder_type is None:
        return []
    probe = _compose(name, request.overrides, return_hydra_config=True)
    info = probe.get("vitplug_train")
    if info is None:
        raise ValueError(
            f"--encoder-type needs a training_ext overlay (one with a 'model' option from configs/training/model/); "
            f"'{name}' has none"
        )
    wanted = HIERA if request.flags.encoder_type == HIERA else "vit"
    if info.trunk_kind == wanted:
        return []
    key = _model_choice_key(probe, info.model_option)
    if key is None:
        raise ValueError(f"cannot find the model option '{info.model_option}' of '{name}' in its defaults list")
    logger.info("--encoder-type %s: model option %s -> %s", request.flags.encoder_type, info.model_option, info.twin)
    return [f"{key}={info.twin}"]


def _model_overrides(cfg: DictConfig, overrides: Sequence[str], trunk_kind: str) -> list[str]:
    """The overrides that rebuild ``cfg.model`` with ``build_sam2(vitplug_train.model_config)``.

    For a ViT trunk ``random_init=true`` is added: the trained checkpoint supplies every
    weight, so rebuilding must not fetch (or need) the original ViT weights.
    """
    out = [o for o in overrides if o.lstrip("+~").startswith("model.")]
    out.append(f"++model.image_size={int(cfg.model.image_size)}")
    if trunk_kind != HIERA:
        out.append("++model.image_encoder.trunk.random_init=true")
    return out


def sam2_ckpt_initializer(path: str, exclude: Sequence[str] = SWAPPED_TRUNK_KEYS, flag: str = "--sam2-ckpt") -> dict:
    """Upstream ``model_weight_initializer`` loading the ``model`` tensors of ``path``.

    Tensors matching ``exclude`` (unix patterns) are dropped with upstream ``CkptExcludeKernel``
    and allowed to be missing with ``ignore_missing_keys``; everything else loads strictly.
    """
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    keep_out = list(exclude)
    state_dict = {
        "_target_": "training.utils.checkpoint_utils.load_checkpoint_and_apply_kernels",
        "checkpoint_path": str(Path(path).expanduser().resolve()),
        "ckpt_state_dict_keys": ["model"],
    }
    if keep_out:
        state_dict["checkpoint_kernels"] = [
            {"_target_": "training.utils.checkpoint_utils.CkptExcludeKernel", "key_pattern": keep_out}
        ]
    return {
        "_partial_": True,
        "_target_": "training.utils.checkpoint_utils.load_state_dict_into_model",
        "strict": True,
        "ignore_unexpected_keys": None,
        "ignore_missing_keys": keep_out or None,
        "state_dict": state_dict,
    }


def register_resolvers() -> None:
    """Upstream's ``${times:..}``/``${divide:..}`` resolvers, once per process."""
    from training.utils.train_utils import register_omegaconf_resolvers

    if not OmegaConf.has_resolver("times"):
        register_omegaconf_resolvers()


def compose_training_config(request: LaunchRequest) -> DictConfig:
    """Compose ``request`` into the final config; raises ValueError/FileNotFoundError on bad input."""
    register_resolvers()
    accelerator = check_accelerator(request.device) or default_accelerator()
    name = config_name(request.config)
    switch = _switch_model_option(name, request)
    kind_probe = _compose(name, [*request.overrides, *switch])
    if "trainer" not in kind_probe or "model" not in kind_probe:
        raise ValueError(f"'{name}' is not a training config (it needs top-level 'trainer' and 'model' nodes)")
    info = kind_probe.get("vitplug_train")
    trunk_kind = info.trunk_kind if info is not None else (
        HIERA if "hieradet" in str(kind_probe.model.image_encoder.trunk.get("_target_", "")) else "vit")
    flag_overrides = encoder_overrides(request.flags, trunk_kind)
    # before the user's overrides, so an explicit trainer.accelerator=... still wins
    device_overrides = [f"trainer.accelerator={accelerator}"]
    # --encoder-type's model option replaces a conflicting option given as an override
    switched = {o.split("=", 1)[0] for o in switch}
    user = [o for o in request.overrides if o.split("=", 1)[0] not in switched]
    all_overrides = [*flag_overrides, *device_overrides, *user, *switch]
    cfg = _compose(name, all_overrides)
    accelerator = cfg.trainer.get("accelerator", "cuda")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"trainer.accelerator must be cuda or cpu, got {accelerator!r}")
    if accelerator == "cuda":
        check_accelerator("cuda")
    check_dtype_on_device(request.flags.force_dtype, accelerator)
    if "dataset" in cfg:
        missing = [k for k in cfg.dataset if OmegaConf.is_missing(cfg.dataset, k)]
        if missing:
            raise ValueError(f"set the dataset: {' '.join(f'dataset.{k}=...' for k in missing)} (missing in '{name}')")
        if request.check_paths:
            check_dataset_paths(cfg, name)
    for flag, path in (("--sam2-ckpt", request.sam2_ckpt), ("--init-ckpt", request.init_ckpt)):
        if path is not None and request.check_paths:
            check_checkpoint_file(path, flag)
    with open_dict(cfg):
        cfg.trainer.model = OmegaConf.merge(cfg.model, cfg.trainer.get("model") or {})
        if accelerator == "cpu" and cfg.trainer.get("_target_") == UPSTREAM_TRAINER:
            cfg.trainer._target_ = CPU_TRAINER
        if request.sam2_ckpt is not None and request.init_ckpt is not None:
            raise ValueError("pass either --sam2-ckpt (official SAM 2 weights around the trunk) or --init-ckpt "
                             "(every tensor of a checkpoint of this model), not both")
        if request.sam2_ckpt is not None:
            # a Hiera trunk is upstream's own: the official checkpoint loads whole
            exclude = () if trunk_kind == HIERA else SWAPPED_TRUNK_KEYS
            cfg.trainer.checkpoint.model_weight_initializer = sam2_ckpt_initializer(request.sam2_ckpt, exclude)
        if request.init_ckpt is not None:
            cfg.trainer.checkpoint.model_weight_initializer = sam2_ckpt_initializer(request.init_ckpt, (), "--init-ckpt")
        if request.experiment_dir is not None:
            cfg.launcher.experiment_log_dir = str(Path(request.experiment_dir).expanduser().resolve())
        elif cfg.launcher.get("experiment_log_dir") is None:
            cfg.launcher.experiment_log_dir = os.path.join(os.getcwd(), "sam2_logs", Path(name).stem)
        if info is not None:
            cfg.vitplug_train.build_sam2 = {
                "config": str(info.model_config),
                "overrides": _model_overrides(cfg, [*flag_overrides, *request.overrides], trunk_kind),
            }
    return cfg
