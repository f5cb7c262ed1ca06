"""Defaults of a few-shot run: ``configs/matching/fewshot.yaml`` with a method preset on top.

``method`` (``ntt``, the default, or ``vitplug``) names ``configs/matching/<method>.yaml``; the
preset only sets documented switches of ``fewshot.yaml``, so a single switch can be flipped on
top of either preset (``--set scoring.iou_factor=true``) to ablate one deviation.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

CONFIG_PACKAGE = "sam2_vitplug.configs.matching"
DEFAULT_CONFIG = "fewshot.yaml"
METHODS = ("ntt", "vitplug")


def _read(name: str) -> DictConfig:
    return OmegaConf.create(resources.files(CONFIG_PACKAGE).joinpath(name).read_text())


def check_method(method: Any) -> str:
    """``method`` as a string, or ``ValueError`` naming the valid ones."""
    if str(method) not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; choose one of {', '.join(METHODS)} (--method)")
    return str(method)


def load_config(overrides: Mapping[str, Any] | Iterable[str] | None = None, name: str = DEFAULT_CONFIG,
                method: str | None = None) -> DictConfig:
    """The YAML defaults, the method preset, then ``overrides`` (a nested dict or ``section.key=value``).

    The method is ``method``, else ``method`` in ``overrides``, else the file's (``ntt``). Unknown
    keys raise ``ValueError`` naming them, so a typo never silently does nothing."""
    base = _read(name)
    OmegaConf.set_struct(base, True)
    extra = OmegaConf.create({})
    if overrides:
        extra = OmegaConf.from_dotlist(list(overrides)) if not isinstance(overrides, Mapping) \
            else OmegaConf.create(dict(overrides))
    chosen = check_method(method if method is not None else extra.get("method", base.method))
    try:
        return OmegaConf.merge(base, _read(f"{chosen}.yaml"), extra, {"method": chosen})
    except Exception as err:  # omegaconf raises ConfigKeyError / ValidationError
        raise ValueError(f"invalid few-shot config override ({err}); valid keys are in configs/matching/{name}") from err
