"""The ``--encoder-*`` flags of ``training_ext.train`` and the Hydra overrides they become.

Kept apart from the launcher so the mapping can be tested without composing anything.
Every trunk flag writes one key under ``model.image_encoder.trunk`` (the node the model config
and upstream ``build_sam2`` read); the neck's ``backbone_channel_list`` interpolates
``trunk.out_dims`` in ``configs/sam2/vitplug_base/vit_image_encoder.yaml``, so it follows
``--encoder-out-dims`` without a second override.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam2_vitplug.hydra_values import quote_value
from sam2_vitplug.modeling.pyramid import UPSAMPLE_MODES

TRUNK = "model.image_encoder.trunk"
DTYPES = ("bf16", "fp16", "fp32")
HIERA = "hiera"


@dataclass(frozen=True)
class EncoderFlags:
    """The trunk-related command-line flags (None = keep the config's value)."""

    encoder_type: str | None = None
    encoder_ckpt: str | None = None
    encoder_out_dims: str | None = None
    encoder_upsample_mode: str | None = None
    no_refine_highres: bool = False
    freeze_vit: bool = False
    force_dtype: str | None = None
    vit_verbose: bool = False

    def vit_only_flags(self) -> list[str]:
        """Flags that only make sense for a ViT trunk, as typed on the command line."""
        given = {
            "--encoder-ckpt": self.encoder_ckpt is not None,
            "--encoder-out-dims": self.encoder_out_dims is not None,
            "--encoder-upsample-mode": self.encoder_upsample_mode is not None,
            "--no-refine-highres": self.no_refine_highres,
            "--freeze-vit": self.freeze_vit,
            "--force-dtype": self.force_dtype is not None,
            "--vit-verbose": self.vit_verbose,
        }
        return [flag for flag, on in given.items() if on]


def parse_out_dims(text: str) -> list[int]:
    """``"1024,1024,512,256"`` -> ``[1024, 1024, 512, 256]`` (C32, C16, C8, C4: low-res first)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise ValueError(
            f"--encoder-out-dims must be 4 positive ints C32,C16,C8,C4 (low-res first), e.g. 1024,1024,512,256; "
            f"got {text!r}"
        )
    return dims




def encoder_overrides(flags: EncoderFlags, trunk_kind: str) -> list[str]:
    """Hydra overrides for ``flags`` on a config whose trunk is ``trunk_kind`` (``vit``/``hiera``).

    Raises ValueError for ViT-only flags on a Hiera trunk and for malformed values.
    """
    if trunk_kind == HIERA:
        bad = flags.vit_only_flags()
        if bad:
            raise ValueError(
                f"{', '.join(bad)} only apply to ViT encoder types; --encoder-type hiera keeps upstream's Hiera trunk "
                "(initialise it with --sam2-ckpt)"
            )
        return []
    out: list[str] = []
    if flags.encoder_type is not None:
        out.append(f"++{TRUNK}.encoder_type={flags.encoder_type}")
    if flags.encoder_ckpt is not None:
        out.append(f"++{TRUNK}.pretrained={quote_value(str(flags.encoder_ckpt))}")
    if flags.encoder_out_dims is not None:
        out.append(f"++{TRUNK}.out_dims=[{','.join(map(str, parse_out_dims(flags.encoder_out_dims)))}]")
    if flags.encoder_upsample_mode is not None:
        if flags.encoder_upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"--encoder-upsample-mode must be one of {UPSAMPLE_MODES}, got {flags.encoder_upsample_mode!r}")
        out.append(f"++{TRUNK}.upsample_mode={flags.encoder_upsample_mode}")
    if flags.no_refine_highres:
        out.append(f"++{TRUNK}.refine_highres=false")
    if flags.freeze_vit:
        out.append(f"++{TRUNK}.freeze_vit=true")
    if flags.force_dtype is not None:
        if flags.force_dtype not in DTYPES:
            raise ValueError(f"--force-dtype must be one of {DTYPES}, got {flags.force_dtype!r}")
        out.append(f"++{TRUNK}.force_dtype={flags.force_dtype}")
    if flags.vit_verbose:
        out.append(f"++{TRUNK}.verbose=true")
    return out


def dtype_runs_on(force_dtype: str, accelerator: str) -> str | None:
    """None when a tiny conv + attention-style matmul + layer norm, forward and backward, runs in
    ``force_dtype`` on ``accelerator``; else the error text. A probe, not a list: support for
    half types on CPU changed across torch releases (fp16 conv/matmul run on CPU in torch 2.14)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[force_dtype]
    try:
        x = torch.randn(1, 4, 8, 8, device=accelerator, dtype=dtype, requires_grad=True)
        w = torch.randn(4, 4, 3, 3, device=accelerator, dtype=dtype, requires_grad=True)
        y = torch.nn.functional.conv2d(x, w, padding=1).flatten(2).transpose(1, 2)
        y = torch.nn.functional.layer_norm(y @ y.transpose(1, 2), (64,))
        y.float().sum().backward()
    except (RuntimeError, NotImplementedError) as err:
        return str(err).splitlines()[0]
    return None


def check_dtype_on_device(force_dtype: str | None, accelerator: str) -> None:
    """Fail before launching when ``--force-dtype`` cannot run on the chosen accelerator."""
    if force_dtype is None or force_dtype == "fp32":
        return
    import torch

    if accelerator == "cuda" and force_dtype == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--force-dtype bf16 is not supported by {torch.cuda.get_device_name()}; use fp16 or fp32")
    problem = dtype_runs_on(force_dtype, accelerator)
    if problem is not None:
        raise ValueError(
            f"--force-dtype {force_dtype} cannot run on {accelerator} with this torch ({problem}); "
            f"use --force-dtype fp32 (or a device that supports {force_dtype})"
        )
