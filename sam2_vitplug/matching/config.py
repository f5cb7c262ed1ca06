"""Defaults of a few-shot run, read from ``configs/matching/fewshot.yaml``."""

from __future__ import annotations

from importlib import resources
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

CONFIG_PACKAGE = "sam2_vitplug.configs.matching"
DEFAULT_CONFIG = "fewshot.yaml"


def load_config(overrides: Mapping[str, Any] | Iterable[str] | None = None, name: str = DEFAULT_CONFIG) -> DictConfig:
    """The YAML defaults merged with ``overrides`` (a nested dict or ``section.key=value`` strings).

    Unknown keys raise ``ValueError`` naming them, so a typo never silently does nothing."""
    text = resources.files(CONFIG_PACKAGE).joinpath(name).read_text()
    base = OmegaConf.create(text)
    OmegaConf.set_struct(base, True)
    if not overrides:
        return base
    extra = OmegaConf.from_dotlist(list(overrides)) if not isinstance(overrides, Mapping) \
        else OmegaConf.create(dict(overrides))
    try:
        return OmegaConf.merge(base, extra)
    except Exception as err:  # omegaconf raises ConfigKeyError / ValidationError
        raise ValueError(f"invalid few-shot config override ({err}); valid keys are in configs/matching/{name}") from err
