"""``sam2-vitplug features IMAGE... --encoder E --transforms K --out F [--pca P]``: high-resolution
ViT features (transform averaging, docs/features.md) of images as safetensors, plus the PCA
picture; the work is :func:`sam2_vitplug.feature_maps.write_features`."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..encoders.sources import ENCODER_SOURCES_HELP
from ..precision import DTYPE_HELP, DTYPES


def cmd_features(args: argparse.Namespace) -> int:
    from ..feature_maps import FeatureOptions, write_features

    print(write_features(FeatureOptions(**{f.name: getattr(args, f.name) for f in fields(FeatureOptions)})))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``features``."""
    p = subparsers.add_parser("features", help="high-resolution ViT features (transform averaging) + PCA picture",
                              description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    p.add_argument("--encoder", required=True, help=ENCODER_SOURCES_HELP)
    p.add_argument("--encoder-type", default=None, help="expected encoder family (default: inferred)")
    p.add_argument("--random-init", action="store_true", help="random weights of the same architecture (tests)")
    p.add_argument("--transforms", type=int, default=8, metavar="K",
                   help="transforms averaged: 1, 2, 4, 5, 8, 10 (4 directions) or 9, 16, 18 (8 directions); "
                        "default 8 = 4 shifts x {no flip, flip}")
    p.add_argument("--shift", type=int, default=None, help="shift in pixels, below patch/2 (default a third of the token step: "
                        "patch // 3, or patch // 6 with --stride-reduction)")
    p.add_argument("--directions", type=int, choices=(4, 8), default=None,
                   help="shift directions (default: 4 when K allows it, else 8)")
    p.add_argument("--border", choices=("reflect", "periodic"), default="reflect", help="border rule of the shifts")
    p.add_argument("--stride-reduction", action="store_true",
                   help="patch-embedding stride P/2 (4x tokens: ~4x MLP and ~16x attention cost)")
    p.add_argument("--input-size", type=int, default=None,
                   help="longer image side fed to the ViT, rounded to the patch (default 518 patch 14, 512 patch 16)")
    p.add_argument("--out-stride", type=int, default=None,
                   help="output resolution = input size / this; 1 = full input resolution (default: the finest "
                        "stride whose file is no larger than the decoded image, at most the patch stride)")
    p.add_argument("--memory-budget", default=None,
                   help="e.g. 4GiB: encode the K views in chunks that fit (default: all in one forward)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help=DTYPE_HELP)
    p.add_argument("--out-dtype", default="fp32", choices=("fp16", "bf16", "fp32"),
                   help="dtype of the saved features (fp16 halves the file)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--out", required=True,
                   help="features file (.safetensors, one image) or folder (<stem>.safetensors per image)")
    p.add_argument("--pca", default=None,
                   help="PCA picture at the image's size: a file (.png/.jpg/..., one image) or a folder (<stem>.png "
                        "per image) (default: none)")
    p.add_argument("--pca-beside", action="store_true", help="put the photo and its PCA picture side by side")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_features)
