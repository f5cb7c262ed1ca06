"""The matcher encoder: an image batch in, a patch-feature grid out.

Scoring and the memory bank only need one thing from an encoder: ``encode(pixels)`` mapping
``(B, 3, S, S)`` RGB in ``[0, 1]`` to a feature grid ``(B, C, h, w)``. ``load_matcher`` builds
that from anything ``sam2_vitplug.encoders.load_encoder`` accepts (preset, hub id, local
directory, Meta ``.pth``), stripping the family's prefix tokens (CLS + registers).

Hook for encoders that are not transformers ViTs: an encoder family (an ``EncoderFamily``
subclass published in the ``sam2_vitplug.encoders`` entry-point group) may define a method
``build_matcher(name: str, preset) -> MatcherEncoder``. When ``name`` is one of that family's
presets, ``load_matcher`` calls it instead of loading a transformers model (the tests use this
for a deterministic colour-histogram encoder).
"""

from __future__ import annotations

import logging
import os
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.tokens import tokens_to_grid
from ..precision import check_dtype, compute_in, parse_dtype

logger = logging.getLogger(__name__)

# encoder input side by patch size: the pre-training grid (37x37 for patch 14, 32x32 for 16)
DEFAULT_INPUT_SIZE = {14: 518, 16: 512}


@runtime_checkable
class MatcherEncoder(Protocol):
    """What the bank and the scorer need from an encoder.

    Attributes:
        identity: a string naming the weights; stored in a bank and checked when it is used.
        input_size: side in pixels of the square images ``encode`` expects.

    An encoder may also carry ``compute_dtype`` (``fp32``/``bf16``/``fp16``, see
    :mod:`sam2_vitplug.precision`); one without it computes in fp32 as far as a bank records.
    """

    identity: str
    input_size: int

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in ``[0, 1]`` -> ``(B, C, h, w)`` patch features."""
        ...


class HFMatcherEncoder(nn.Module):
    """A transformers ViT from ``load_encoder`` as a :class:`MatcherEncoder`.

    The patch grid is the last ``h*w`` tokens of ``last_hidden_state``; the prefix count
    (``EncoderFamily.num_prefix_tokens``) is checked, never assumed.

    ``compute_dtype`` (``fp32`` default, ``bf16``, ``fp16``): the ViT forward runs under
    :func:`~sam2_vitplug.precision.autocast` with cached low-precision copies of its frozen
    Linear weights (:func:`~sam2_vitplug.precision.lowp_weights`; same numbers as autocast
    alone, without re-casting 0.6 GB of ViT-L weights per image). Normalisation of the pixels
    and the returned grid are fp32; fp32 runs exactly the code without autocast.
    """

    def __init__(self, loaded, identity: str, input_size: int | None = None, compute_dtype: str = "fp32") -> None:
        super().__init__()
        self.compute_dtype = parse_dtype(compute_dtype)
        self.vit = loaded.model.eval()
        self.family = loaded.family
        config = self.vit.config
        patch = config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.num_prefix_tokens = self.family.num_prefix_tokens(config)
        self.identity = identity
        self.input_size = int(input_size or DEFAULT_INPUT_SIZE.get(self.patch_size, 37 * self.patch_size))
        if self.input_size <= 0 or self.input_size % self.patch_size:
            nearest = max(1, round(self.input_size / self.patch_size)) * self.patch_size
            raise ValueError(
                f"matcher input size {self.input_size} is not a positive multiple of the patch size "
                f"{self.patch_size}; use e.g. --input-size {nearest} (the default is "
                f"{DEFAULT_INPUT_SIZE.get(self.patch_size, 37 * self.patch_size)})"
            )
        preset = loaded.preset
        mean = preset.mean if preset is not None else (0.485, 0.456, 0.406)
        std = preset.std if preset is not None else (0.229, 0.224, 0.225)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._forward_kwargs = dict(self.family.forward_kwargs)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def tokens_to_grid(self, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """``(B, prefix + gh*gw, C)`` -> ``(B, C, gh, gw)``; raises if the token count disagrees."""
        return tokens_to_grid(tokens, self.num_prefix_tokens, gh, gw, f"{self.family.name} ViT")

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image {height}x{width} is not a multiple of patch size {self.patch_size}")
        x = (pixels.to(self.mean.device, self.mean.dtype) - self.mean) / self.std
        dtype = next(self.vit.parameters()).dtype
        with compute_in(self.compute_dtype, x.device, self.vit):
            out = self.vit(pixel_values=x.to(dtype), **self._forward_kwargs)
        grid = self.tokens_to_grid(out.last_hidden_state, height // self.patch_size, width // self.patch_size)
        return grid.float()

    def hr_extractor(self, transforms: int, *, shift: int | None = None, directions: int | None = None,
                     border: str = "reflect", memory_budget: int | str | None = None):
        """A :class:`~sam2_vitplug.modeling.hr_features.HRFeatureExtractor` on this encoder's
        ViT (shares its weights) in this encoder's ``compute_dtype`` (it keeps the transform
        average fp32 itself); raises ``ValueError`` for an unsupported K or shift."""
        from ..modeling.hr_features import HRFeatureExtractor

        return HRFeatureExtractor(self.vit, self.family, transforms=transforms, shift=shift, directions=directions,
                                  border=border, memory_budget=memory_budget, dtype=self.compute_dtype)

    @torch.inference_mode()
    def encode_hr(self, pixels: torch.Tensor, size: tuple[int, int], transforms: int, *,
                  shift: int | None = None) -> torch.Tensor:
        """``(B, 3, S, S)`` RGB in ``[0, 1]`` -> ``(B, C, size)`` features averaged over
        ``transforms`` shifted/flipped copies (docs/architecture.md section 5), float32."""
        x = (pixels.to(self.mean.device, self.mean.dtype) - self.mean) / self.std
        return self.hr_extractor(transforms, shift=shift)(x, size).float()


def load_matcher(
    name: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
    encoder_type: str | None = None,
    random_init: bool = False,
    dtype: str = "fp32",
) -> MatcherEncoder:
    """A :class:`MatcherEncoder` for a preset, hub id, local directory or Meta ``.pth``.

    ``identity`` is the preset name or the path/id as given (resolved to an absolute path for
    local files), so a bank can be checked against the run's encoder. ``random_init`` builds
    seeded random weights (identity suffix ``#random``) for benchmarks and tests. ``dtype``
    (``fp32``/``bf16``/``fp16``) is checked against ``device`` before anything is loaded
    (ValueError naming the fix); a plugin's matcher computes in its own precision (a warning
    says so when ``dtype`` is not fp32).
    """
    from ..encoders import find_preset, get_family, load_encoder

    dtype = check_dtype(dtype, device)
    text = os.fspath(name)
    preset = find_preset(text)
    if preset is not None:
        family = get_family(preset.encoder_type)
        builder = getattr(family, "build_matcher", None)
        if callable(builder):
            matcher = builder(text, preset)
            if not isinstance(matcher, MatcherEncoder):
                raise TypeError(f"{type(family).__name__}.build_matcher must return a MatcherEncoder, "
                                f"got {type(matcher).__name__}")
            if isinstance(matcher, nn.Module):
                matcher.to(device)
            if dtype != "fp32" and getattr(matcher, "compute_dtype", "fp32") != dtype:
                logger.warning("matcher %s (%s) computes in its own precision; dtype %s applies to SAM2 only",
                               text, type(matcher).__name__, dtype)
            return matcher
    if random_init:  # seeded, so `memory --random-init` and a later `run` get the same weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            loaded = load_encoder(text, encoder_type, random_init=True)
    else:
        loaded = load_encoder(text, encoder_type)
    identity = text if preset is not None or not os.path.exists(os.path.expanduser(text)) else \
        os.path.abspath(os.path.expanduser(text))
    if random_init:
        identity += "#random"
    return HFMatcherEncoder(loaded, identity, input_size, compute_dtype=dtype).to(device)


def resize_square(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, size, size)`` (bilinear, antialiased when shrinking)."""
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    shrink = pixels.shape[-2] > size or pixels.shape[-1] > size
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def matcher_weights_sha256(matcher) -> str | None:
    """The digest of a matcher's ViT weights (:func:`sam2_vitplug.weights_audit.weights_sha256`),
    or None for a matcher without a ViT (a plugin's): banks and runs compare weights, not paths.

    Kept on the matcher after the first call: a matcher's ViT is frozen once loaded, and a run
    asks twice (the bank check and the run's settings record)."""
    from ..weights_audit import weights_sha256

    vit = getattr(matcher, "vit", None)
    if not isinstance(vit, nn.Module):
        return None
    cached = getattr(matcher, "_weights_sha256", None)
    if cached is None:
        cached = weights_sha256(vit)
        matcher._weights_sha256 = cached
    return cached
