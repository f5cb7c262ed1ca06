"""Invertible image transforms for transform-averaged ViT features (docs/architecture.md section 5).

A ViT sees an image through a fixed patch grid, so a feature map only says what is in each
``P x P`` cell. Shifting the image by a few pixels (or flipping it) moves the content against
that grid; encoding the shifted copies, mapping every feature map back to the original pixel
positions and averaging gives features that vary inside a patch (the HR-Dv2 recipe, github.com/tldr-group/HR-Dv2).

This module holds the transforms and the exact geometry of "upsample, then invert": every
output pixel centre ``u`` (continuous coordinates, pixel ``t`` has centre ``t + 0.5``) is
mapped to where its content sits in the transformed image (``v = W - u`` for a flip, then
``+ d`` for a shift by ``d``), and the token map is sampled there bilinearly. The sampling is
separable, so one transform's "upsample + invert" is ``A_y @ F @ A_x^T`` with two small dense
matrices; with the identity it reproduces ``F.interpolate(mode="bilinear",
align_corners=False)`` (to float rounding), so K=1 is plain bilinear upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F

Border = Literal["reflect", "periodic"]
BORDERS: tuple[str, ...] = ("reflect", "periodic")
DIRECTIONS: tuple[int, ...] = (4, 8)


@dataclass(frozen=True)
class Transform:
    """Horizontal flip (optional), then a shift of the content by ``(dy, dx)`` pixels."""

    dy: int = 0
    dx: int = 0
    flip: bool = False

    @property
    def is_identity(self) -> bool:
        return self.dy == 0 and self.dx == 0 and not self.flip

    def apply(self, x: torch.Tensor, border: Border = "reflect") -> torch.Tensor:
        """``(B, C, H, W)`` -> the transformed ``(B, C, H, W)``.

        ``periodic`` rolls the image (content leaving one side re-enters on the other);
        ``reflect`` pads by reflection on the side the content moves away from and crops the
        other side (the content pushed out is lost, as with a camera shift)."""
        if self.flip:
            x = x.flip(-1)
        if self.dy == 0 and self.dx == 0:
            return x
        if border == "periodic":
            return torch.roll(x, shifts=(self.dy, self.dx), dims=(-2, -1))
        height, width = x.shape[-2:]
        pad = (max(self.dx, 0), max(-self.dx, 0), max(self.dy, 0), max(-self.dy, 0))
        padded = F.pad(x, pad, mode="reflect")
        top, left = max(-self.dy, 0), max(-self.dx, 0)
        return padded[..., top:top + height, left:left + width]

    def __str__(self) -> str:
        return "id" if self.is_identity else f"{'flip+' if self.flip else ''}shift({self.dy},{self.dx})"


def supported_counts(directions: int) -> tuple[int, ...]:
    """Transform counts K that give a balanced set (mean shift 0) with ``directions`` shifts.

    1 = identity; 2 = identity + flip; D = the D shifts; D+1 = identity + D shifts;
    2D and 2(D+1) = those with and without a horizontal flip."""
    d = int(directions)
    return tuple(sorted({1, 2, d, d + 1, 2 * d, 2 * (d + 1)}))


def default_shift(step: int) -> int:
    """A third of the token step (4 px for patch 14, 5 px for patch 16; 2 px with stride P/2).

    Measured (tools/hr_probe.py, README "High-resolution features"): on the shapes probe with
    patch 14, shifts of 1/3/4/5/6 px gave K=16 boundary-mIoU gains of +3.7/+8.7/+14.4/+12.3/+8.8
    points over bilinear and K=8 gains of +3.3/+6.2/+8.2/+10.9/+11.5: tiny shifts barely move the
    content against the grid, the largest ones land near the neighbouring patch."""
    return max(1, int(step) // 3)


def _offsets(directions: int, n: int) -> list[tuple[int, int]]:
    four = [(0, n), (0, -n), (n, 0), (-n, 0)]
    diagonal = [(n, n), (n, -n), (-n, n), (-n, -n)]
    return four if directions == 4 else four + diagonal


@dataclass(frozen=True)
class TransformSet:
    """K transforms and the border rule they are applied with (identity first when present)."""

    transforms: tuple[Transform, ...]
    border: Border = "reflect"
    shift: int = 0
    directions: int = 4

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]

    @property
    def k(self) -> int:
        return len(self.transforms)

    def describe(self) -> str:
        shifted = any(t.dy or t.dx for t in self.transforms)
        how = f" ({self.directions} directions, shift {self.shift} px, {self.border} border)" if shifted else ""
        return f"K={self.k}{how}: " + ", ".join(map(str, self.transforms))


def make_transforms(
    k: int,
    patch_size: int,
    *,
    shift: int | None = None,
    directions: int | None = None,
    border: str = "reflect",
) -> TransformSet:
    """The K-transform set for a patch-``patch_size`` ViT (see :func:`supported_counts`).

    Args:
        k: number of transforms (images per ViT forward).
        patch_size: the ViT's patch size P; shifts must be below P/2 (a shift of P/2 or more
            lands closer to the next patch than to the original position).
        shift: shift in pixels, ``1 <= shift < P/2``; None = :func:`default_shift` of P.
        directions: 4 (up/down/left/right) or 8 (and the diagonals); None = 4 when K fits a
            4-direction set, else 8.
        border: ``reflect`` or ``periodic``.

    Raises:
        ValueError: for any value outside those ranges, naming it and the valid choices.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of transforms K must be a positive int, got {k!r}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    patch = int(patch_size)
    if shift is None:
        shift = default_shift(patch)
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 1:
        raise ValueError(f"shift must be a positive int (pixels), got {shift!r}")
    if 2 * shift >= patch:
        raise ValueError(
            f"shift {shift} px >= patch/2 = {patch / 2:g} for patch size {patch}: a shift must stay below half a "
            f"patch; use 1..{(patch - 1) // 2} (default {default_shift(patch)})"
        )
    if directions is None:
        fits = [d for d in DIRECTIONS if k in supported_counts(d)]
        if not fits:
            raise ValueError(
                f"K={k} transforms is not supported: with 4 directions K can be "
                f"{', '.join(map(str, supported_counts(4)))}; with 8 directions "
                f"{', '.join(map(str, supported_counts(8)))}"
            )
        directions = fits[0]
    elif directions not in DIRECTIONS:
        raise ValueError(f"directions must be 4 or 8, got {directions!r}")
    elif k not in supported_counts(directions):
        other = 12 - directions
        raise ValueError(
            f"K={k} transforms is not supported with {directions} directions: use K in "
            f"{', '.join(map(str, supported_counts(directions)))} (or directions={other}: "
            f"{', '.join(map(str, supported_counts(other)))})"
        )
    d = directions
    shifts = [Transform(dy, dx) for dy, dx in _offsets(d, shift)]
    identity = Transform()
    if k == 1:
        base, flips = [identity], False
    elif k == 2:
        base, flips = [identity], True
    elif k in (d, 2 * d):
        base, flips = shifts, k == 2 * d
    else:  # d + 1, 2 * (d + 1)
        base, flips = [identity] + shifts, k == 2 * (d + 1)
    transforms = list(base) + ([Transform(t.dy, t.dx, True) for t in base] if flips else [])
    return TransformSet(tuple(transforms), border, shift, d)  # type: ignore[arg-type]


def apply_transforms(x: torch.Tensor, tset: TransformSet, items: Sequence[int] | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(n, C, H, W)``: item ``i`` is image ``i // K`` under transform ``i % K``.

    ``items`` selects flattened item indices (a chunk); None = all ``B*K`` of them."""
    k = tset.k
    if items is None:
        items = range(x.shape[0] * k)
    return torch.cat([tset[i % k].apply(x[i // k:i // k + 1], tset.border) for i in items], 0)


def axis_weights(
    out_len: int,
    grid_len: int,
    image_len: int,
    *,
    patch: int,
    stride: int,
    offset: int = 0,
    flip: bool = False,
    wrap: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(out_len, grid_len)`` bilinear weights from a token axis to output pixels, inverting one
    transform along this axis.

    Token ``j`` (kernel ``patch``, step ``stride``) is centred at pixel ``j*stride + patch/2`` of
    the transformed image. Output pixel ``t`` covers the original image at ``u = (t+0.5) *
    image_len / out_len``; its content sits at ``v = (image_len - u if flip else u) + offset``
    (taken modulo ``image_len`` when ``wrap``, the inverse of a periodic roll). Coordinates
    outside the token centres are clamped to the edge token, as ``F.interpolate`` does."""
    t = torch.arange(out_len, dtype=torch.float64)
    u = (t + 0.5) * (image_len / out_len)
    v = (image_len - u if flip else u) + offset
    if wrap:
        v = torch.remainder(v, image_len)
    s = ((v - patch / 2) / stride).clamp(0, grid_len - 1)
    i0 = s.floor().long().clamp(max=grid_len - 1)
    w1 = s - i0
    i1 = (i0 + 1).clamp(max=grid_len - 1)
    weights = torch.zeros(out_len, grid_len, dtype=torch.float64)
    rows = torch.arange(out_len)
    weights.index_put_((rows, i0), 1 - w1, accumulate=True)
    weights.index_put_((rows, i1), w1, accumulate=True)
    return weights.to(dtype=dtype, device=device)


def grid_size(length: int, patch: int, stride: int) -> int:
    """Tokens along an axis of ``length`` pixels for kernel ``patch`` and step ``stride``."""
    return (int(length) - int(patch)) // int(stride) + 1


def check_target_size(target: tuple[int, int], grid: tuple[int, int], image: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``grid <= target <= image`` on both axes."""
    th, tw = (int(v) for v in target)
    if th < grid[0] or tw < grid[1]:
        raise ValueError(
            f"target size {th}x{tw} is smaller than the token grid {grid[0]}x{grid[1]}: averaging cannot add detail "
            f"below one token; ask for at least {grid[0]}x{grid[1]} (or pool the plain token map instead)"
        )
    if th > image[0] or tw > image[1]:
        raise ValueError(
            f"target size {th}x{tw} is larger than the image {image[0]}x{image[1]} the ViT sees: features go up to "
            f"full image resolution; use at most {image[0]}x{image[1]}"
        )


def accumulate_average(
    out: torch.Tensor,
    maps: torch.Tensor,
    items: Sequence[int],
    tset: TransformSet,
    image_size: tuple[int, int],
    *,
    patch: int,
    stride: int | None = None,
) -> None:
    """Add ``1/K`` of each item's upsampled, inverted map to ``out`` in place.

    Args:
        out: ``(B, C, Th, Tw)`` accumulator (the averaged features once every item is added).
        maps: ``(n, C, gh, gw)`` token maps of the transformed images ``items``.
        items: flattened item indices (image ``i // K``, transform ``i % K``) of ``maps``.
        image_size: ``(H, W)`` of the images the ViT saw.
        patch, stride: the patch embedding's kernel and step (stride None = patch).

    Cost: one ``(C, gh, gw) @ (gw, Tw)`` matmul per item and one ``(Th, gh) @ (C, gh, Tw)``
    per (image, vertical shift) pair: the shifts share 3 vertical offsets (-n, 0, n), so the
    expensive full-resolution matmul runs at most 3 times per image and chunk, not K times.
    It is accumulated in place (``baddbmm_``): no temporary of the output's size.
    """
    stride = int(stride or patch)
    k = tset.k
    _, channels, th, tw = out.shape
    gh, gw = maps.shape[-2:]
    height, width = image_size
    periodic = tset.border == "periodic"
    groups: dict[tuple[int, int], torch.Tensor] = {}
    for j, item in enumerate(items):
        tr = tset[item % k]
        ax = axis_weights(tw, gw, width, patch=patch, stride=stride, offset=tr.dx, flip=tr.flip,
                          wrap=periodic and tr.dx != 0, dtype=out.dtype, device=out.device)
        part = torch.matmul(maps[j].to(out.dtype), ax.T)  # (C, gh, Tw)
        key = (item // k, tr.dy)
        groups[key] = part if key not in groups else groups[key].add_(part)
    for (b, dy), part in groups.items():
        ay = axis_weights(th, gh, height, patch=patch, stride=stride, offset=dy, wrap=periodic and dy != 0,
                          dtype=out.dtype, device=out.device)
        out[b].baddbmm_(ay.expand(channels, th, gh), part, alpha=1.0 / k)


def average_maps(
    maps: torch.Tensor,
    tset: TransformSet,
    image_size: tuple[int, int],
    target_size: tuple[int, int],
    *,
    patch: int,
    stride: int | None = None,
) -> torch.Tensor:
    """``(B*K, C, gh, gw)`` token maps of transformed images -> ``(B, C, Th, Tw)`` averages.

    Differentiable (the trunk trains through it); output dtype = the maps' dtype."""
    k = tset.k
    if maps.shape[0] % k:
        raise ValueError(f"got {maps.shape[0]} maps for K={k} transforms; expected a multiple of K (B*K)")
    batch = maps.shape[0] // k
    out = maps.new_zeros(batch, maps.shape[1], int(target_size[0]), int(target_size[1]))
    accumulate_average(out, maps, range(maps.shape[0]), tset, image_size, patch=patch, stride=stride)
    return out
