"""The encoder registry, read from the ``sam2_vitplug.encoders`` entry-point group.

Every encoder type (and so every ``--encoder-type`` choice) comes from installed entry
points, never from a list in this code: a third-party package adds a family by declaring
``my_type = my_pkg.module:MY_FAMILY`` in that group. Entry points are loaded once, on the
first lookup; ``refresh()`` reloads them (tests that install a family at run time).
"""

from __future__ import annotations

import logging
from importlib import metadata

from .families import EncoderFamily
from .presets import EncoderPreset

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sam2_vitplug.encoders"

_families: dict[str, EncoderFamily] | None = None
_presets: dict[str, EncoderPreset] | None = None


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "<unknown distribution>"


def _load() -> tuple[dict[str, EncoderFamily], dict[str, EncoderPreset]]:
    families: dict[str, EncoderFamily] = {}
    owners: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        owner = _dist_name(ep)
        if ep.name in families:
            if owners[ep.name] == owner:
                continue  # the same distribution seen twice on sys.path
            raise RuntimeError(
                f"encoder type '{ep.name}' is declared twice in the '{ENTRY_POINT_GROUP}' entry-point group: "
                f"by '{owners[ep.name]}' and by '{owner}'. Uninstall one of them or rename its entry point."
            )
        family = ep.load()
        if not isinstance(family, EncoderFamily):
            raise TypeError(
                f"entry point '{ep.name} = {ep.value}' (from '{owner}') must point at an "
                f"sam2_vitplug.encoders.EncoderFamily, got {type(family).__name__}"
            )
        if family.name != ep.name:
            raise ValueError(
                f"entry point '{ep.name}' (from '{owner}') points at a family named '{family.name}'; "
                "the entry-point name and EncoderFamily.name must be equal"
            )
        families[ep.name] = family
        owners[ep.name] = owner

    presets: dict[str, EncoderPreset] = {}
    for family in families.values():
        for preset in family.presets:
            if preset.name in presets:
                raise RuntimeError(
                    f"preset '{preset.name}' is declared by encoder types "
                    f"'{presets[preset.name].encoder_type}' and '{family.name}'; preset names must be unique"
                )
            if preset.encoder_type != family.name:
                raise ValueError(
                    f"preset '{preset.name}' says encoder_type='{preset.encoder_type}' "
                    f"but is listed by family '{family.name}'"
                )
            presets[preset.name] = preset
    if not families:
        logger.warning(
            "no encoder types found in the '%s' entry-point group: is sam2-vitplug installed (pip install -e .)?",
            ENTRY_POINT_GROUP,
        )
    return families, presets


def refresh() -> None:
    """Forget the loaded entry points; the next lookup reads them again."""
    global _families, _presets
    _families = _presets = None


def _ensure() -> tuple[dict[str, EncoderFamily], dict[str, EncoderPreset]]:
    global _families, _presets
    if _families is None or _presets is None:
        _families, _presets = _load()
    return _families, _presets


def list_encoder_types() -> list[str]:
    """Installed encoder types, sorted (the ``--encoder-type`` choices)."""
    return sorted(_ensure()[0])


def get_family(encoder_type: str) -> EncoderFamily:
    families = _ensure()[0]
    try:
        return families[encoder_type]
    except KeyError:
        raise KeyError(
            f"unknown encoder type '{encoder_type}'; installed encoder types: {', '.join(sorted(families)) or 'none'}"
        ) from None


def list_presets(encoder_type: str | None = None) -> list[EncoderPreset]:
    """All presets, or those of one encoder type, sorted by name."""
    presets = _ensure()[1].values()
    if encoder_type is not None:
        get_family(encoder_type)  # unknown type -> KeyError listing the installed ones
        presets = [p for p in presets if p.encoder_type == encoder_type]
    return sorted(presets, key=lambda p: p.name)


def find_preset(name: str) -> EncoderPreset | None:
    """The preset called ``name``, or None (names that are not presets may be hub ids or paths)."""
    return _ensure()[1].get(name)


def get_preset(name: str) -> EncoderPreset:
    preset = find_preset(name)
    if preset is None:
        raise KeyError(f"unknown encoder preset '{name}'; available presets: {', '.join(sorted(_ensure()[1]))}")
    return preset
