"""Hand a composed training config to upstream ``training.train.main``, as upstream's own
command line would (locally with ``single_node_runner``, or through submitit/SLURM)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UpstreamFlags:
    """The flags of upstream ``training/train.py`` that pass through unchanged."""

    use_cluster: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    num_gpus: int | None = None
    num_nodes: int | None = None


def _write_atomic(path: Path, text: str) -> None:
    from sam2_vitplug.atomic import atomic_target

    with atomic_target(path) as tmp:
        tmp.write_text(text)


def launch(cfg, config_name: str, flags: UpstreamFlags) -> None:
    """Write ``cfg`` to ``<experiment_log_dir>/launch/<config stem>.yaml`` and run upstream
    ``training.train.main`` on it (upstream composes its ``--config`` itself, so Hydra is
    pointed at the fully composed file)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from training import train as upstream_train

    launch_dir = Path(cfg.launcher.experiment_log_dir) / "launch"
    name = Path(config_name).stem + ".yaml"
    _write_atomic(launch_dir / name, OmegaConf.to_yaml(cfg))
    GlobalHydra.instance().clear()
    initialize_config_dir(str(launch_dir), version_base="1.2")
    upstream_args = argparse.Namespace(
        config=name, use_cluster=bool(flags.use_cluster) if flags.use_cluster is not None else None,
        partition=flags.partition, account=flags.account, qos=flags.qos, num_gpus=flags.num_gpus,
        num_nodes=flags.num_nodes,
    )
    upstream_train.main(upstream_args)
