"""Hydra search-path plugin: makes the sam2-vitplug configs visible to every Hydra app.

Upstream ``sam2/__init__.py`` initialises Hydra on the ``sam2`` config module, so
``sam2.build_sam.build_sam2(name)`` composes ``name`` on Hydra's search path. Hydra
discovers this module through the ``hydra_plugins`` namespace package and appends:

* ``pkg://sam2_vitplug.configs.sam2``: model configs by bare name (``sam2_vit_dino.yaml``);
* ``pkg://sam2_vitplug.configs``: ``training/...`` and ``matching/...`` configs.

Appending (never prepending) means an upstream name always resolves to upstream's file.
Import nothing heavy here: Hydra imports every plugin at start-up.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

SEARCH_PATHS = (
    ("sam2-vitplug-models", "pkg://sam2_vitplug.configs.sam2"),
    ("sam2-vitplug", "pkg://sam2_vitplug.configs"),
)


class Sam2VitplugSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for provider, path in SEARCH_PATHS:
            search_path.append(provider=provider, path=path)
