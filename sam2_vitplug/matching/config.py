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
        merged = OmegaConf.merge(base, _read(f"{chosen}.yaml"), extra, {"method": chosen})
    except Exception as err:  # omegaconf raises ConfigKeyError / ValidationError
        raise ValueError(f"invalid few-shot config override ({err}); valid keys are in configs/matching/{name}") from err
    _check_types(OmegaConf.to_container(base), OmegaConf.to_container(extra), "")
    return merged


def _kind(value: Any) -> str | None:
    """The type an override must have to replace ``value`` (None: anything goes)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return None


def _check_types(defaults: Mapping[str, Any], extra: Mapping[str, Any], prefix: str) -> None:
    """``ValueError`` naming the key when an override's type differs from the default's: the YAML
    is untyped, so ``proposals.iou_thr=abc`` would otherwise fail (or compare strings) mid-run."""
    for key, value in extra.items():
        default, full = defaults.get(key), f"{prefix}{key}"
        if isinstance(default, Mapping) and isinstance(value, Mapping):
            _check_types(default, value, f"{full}.")
            continue
        kind = _kind(default)
        ok = kind is None or value is None or (isinstance(value, bool) if kind == "true or false" else
                                               isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            shown = str(default).lower() if isinstance(default, bool) else default
            raise ValueError(f"--set {full}={value}: expected {kind} (default {shown}); e.g. --set {full}={shown}")


def check_run_config(cfg: DictConfig) -> None:
    """``ValueError`` naming the option for values a run cannot use, before any model is built."""
    p = cfg.proposals
    side = p.points_per_side
    if not float(side).is_integer() or not 1 <= side <= MAX_POINTS_PER_SIDE:
        raise ValueError(f"--points-per-side {side} (proposals.points_per_side) must be an integer in "
                         f"1..{MAX_POINTS_PER_SIDE}: it decodes side x side = {int(side) ** 2:,} prompts per image "
                         f"(default 32 = 1,024; {MAX_POINTS_PER_SIDE} = {MAX_POINTS_PER_SIDE ** 2:,})")
    if p.iou_thr is not None and not 0.0 <= float(p.iou_thr) <= 1.0:
        raise ValueError(f"--iou-thr {p.iou_thr} (proposals.iou_thr) is a predicted IoU and must be in [0, 1]")
    top_k = cfg.output.top_k
    if not float(top_k).is_integer() or top_k < 1:
        raise ValueError(f"--top-k {top_k} (output.top_k) must be an integer >= 1 (detections kept per image)")


MAX_POINTS_PER_SIDE = 256  # 65,536 prompts per image: minutes per image on a GPU; beyond is a typo
