"""``sam2-vitplug train`` (= ``python -m training_ext.train``): upstream SAM 2 training with ``--encoder-*`` flags.

    sam2-vitplug train --config configs/training/image_png_finetune.yaml \\
        --encoder-type dino --encoder-ckpt facebook/dinov2-large --encoder-out-dims 1024,1024,1024,1024 \\
        dataset.img_folder=/data/JPEGImages dataset.gt_folder=/data/Annotations

The flags and ``key=value`` overrides are applied when composing the overlay; the composed
config is written to ``<experiment_log_dir>/launch/<overlay>.yaml`` and handed to upstream
``training.train.main`` unchanged, so launching is upstream's: ``single_node_runner`` (one
process per ``--num-gpus``, gloo on CPU) locally, submitit/SLURM with ``--use-cluster 1``.
Re-running the same command resumes from ``<experiment_log_dir>/checkpoints/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..errors import one_line
from .formatting import HelpFormatter

logger = logging.getLogger(__name__)


def encoder_type_choices() -> list[str]:
    """``--encoder-type`` choices: the ``sam2_vitplug.encoders`` entry points."""
    from ..encoders import list_encoder_types

    return list_encoder_types()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every training flag; ``sam2-vitplug train`` and ``python -m training_ext.train`` share them."""
    from training_ext.flags import DTYPES, UPSAMPLE_MODES

    parser.add_argument("-c", "--config", required=True,
                        help="training overlay: configs/training/<name>.yaml, training/<name>.yaml or an upstream name")
    enc = parser.add_argument_group("encoder (become Hydra overrides on model.image_encoder.trunk)")
    enc.add_argument("--encoder-type", choices=encoder_type_choices(), default=None,
                     help="trunk family; 'hiera' switches to upstream's Hiera model option")
    enc.add_argument("--encoder-ckpt", default=None, help="ViT weights: preset name, hub id, local dir or a Meta checkpoint (DINOv2/DINOv3 .pth, "
                          "I-JEPA .pth.tar, FILE.pth.tar#encoder for its context encoder)")
    enc.add_argument("--encoder-out-dims", default=None, metavar="C32,C16,C8,C4",
                     help="pyramid channels, low-res first; the neck's backbone_channel_list follows")
    enc.add_argument("--encoder-upsample-mode", choices=UPSAMPLE_MODES, default=None,
                     help="how the stride 8/4 maps are built (default: the config's, bilinear)")
    enc.add_argument("--no-refine-highres", action="store_true", help="no refinement blocks on the stride 8/4 maps")
    enc.add_argument("--freeze-vit", action="store_true", help="no gradients through the ViT (pyramid, neck, heads train)")
    enc.add_argument("--force-dtype", choices=DTYPES, default=None, help="ViT compute dtype")
    enc.add_argument("--vit-verbose", action="store_true", help="print the trunk's shapes once per input size")
    parser.add_argument("--sam2-ckpt", default=None,
                        help="official SAM 2 checkpoint for prompt encoder, mask decoder and memory modules "
                             "(the ViT trunk and neck convs are skipped)")
    parser.add_argument("--init-ckpt", default=None,
                        help="start from every tensor of a checkpoint of this same model (strict), e.g. an export")
    parser.add_argument("--device", default=None,
                        help="cuda or cpu (default: cuda if available, else cpu); cpu uses training_ext's CPUTrainer")
    parser.add_argument("--experiment-dir", default=None,
                        help="launcher.experiment_log_dir (default: the overlay's, else ./sam2_logs/<overlay>)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit (dataset paths and checkpoint contents unchecked)")
    up = parser.add_argument_group("upstream training.train flags (passed through unchanged)")
    up.add_argument("--use-cluster", type=int, default=None, help="0: run locally, 1: submit with submitit/SLURM")
    up.add_argument("--partition", default=None, help="SLURM partition")
    up.add_argument("--account", default=None, help="SLURM account")
    up.add_argument("--qos", default=None, help="SLURM qos")
    up.add_argument("--num-gpus", type=int, default=None, help="processes per node (gloo processes on CPU)")
    up.add_argument("--num-nodes", type=int, default=None, help="number of nodes")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="extra Hydra overrides")


def build_parser(prog: str = "python -m training_ext.train") -> argparse.ArgumentParser:
    """The stand-alone training parser (its help lists the overlays)."""
    from training_ext.compose import list_overlays

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                     epilog="overlays: " + ", ".join(list_overlays()))
    add_arguments(parser)
    return parser


def request_from_args(args: argparse.Namespace):
    """The :class:`training_ext.compose.LaunchRequest` for parsed command-line ``args``."""
    from training_ext.compose import LaunchRequest
    from training_ext.flags import EncoderFlags

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value, got {bad}")
    if args.num_gpus is not None and args.num_gpus < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {args.num_gpus}")
    if args.num_nodes is not None and args.num_nodes < 1:
        raise ValueError(f"--num-nodes must be >= 1, got {args.num_nodes}")
    flags = EncoderFlags(
        encoder_type=args.encoder_type, encoder_ckpt=args.encoder_ckpt, encoder_out_dims=args.encoder_out_dims,
        encoder_upsample_mode=args.encoder_upsample_mode, no_refine_highres=args.no_refine_highres,
        freeze_vit=args.freeze_vit, force_dtype=args.force_dtype, vit_verbose=args.vit_verbose,
    )
    return LaunchRequest(config=args.config, overrides=list(args.overrides), flags=flags, device=args.device,
                         sam2_ckpt=args.sam2_ckpt, init_ckpt=args.init_ckpt, experiment_dir=args.experiment_dir,
                         check_paths=not args.print_config)


def upstream_flags(args: argparse.Namespace):
    """The pass-through flags of upstream ``training/train.py``."""
    from training_ext.launch import UpstreamFlags

    return UpstreamFlags(use_cluster=args.use_cluster, partition=args.partition, account=args.account, qos=args.qos,
                         num_gpus=args.num_gpus, num_nodes=args.num_nodes)


def compose_or_print(args: argparse.Namespace):
    """The composed config to launch, or None after ``--print-config`` printed it."""
    from omegaconf import OmegaConf

    from training_ext.compose import compose_training_config

    cfg = compose_training_config(request_from_args(args))
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    return cfg


def run(args: argparse.Namespace) -> int:
    """Compose, then print (``--print-config``) or launch; user errors raise (one line each)."""
    from training_ext.launch import launch

    cfg = compose_or_print(args)
    if cfg is not None:
        launch(cfg, args.config, upstream_flags(args))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m training_ext.train", verbose: bool = False) -> int:
    """Parse (flags and ``key=value`` overrides in any order) and run; exit 2 with one line on a
    user error found before launching."""
    import warnings

    parser = build_parser(prog)
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
    from training_ext.launch import launch

    try:
        cfg = compose_or_print(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        if verbose:
            raise
        prefix = "sam2-vitplug" if prog.startswith("sam2-vitplug") else prog  # as the other commands say it
        parser.exit(2, f"{prefix}: error: {one_line(err)}\n")
    if cfg is not None:
        launch(cfg, args.config, upstream_flags(args))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` (its own parser: ``sam2_vitplug.cli.main`` hands ``train ...`` to :func:`main`,
    since overrides may come between flags)."""
    p = subparsers.add_parser("train", help="upstream SAM 2 training with a ViT trunk (= python -m training_ext.train)",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)
