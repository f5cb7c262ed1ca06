"""Test-only encoder family: a deterministic colour-histogram 'encoder' (no transformers).

Published at test time through the ``sam2_vitplug.encoders`` entry-point group (the tests write
a dist-info folder declaring ``colorhist = fewshot_colorhist:COLORHIST``). It uses the
``build_matcher`` hook of ``sam2_vitplug.matching.load_matcher``: each patch's feature is the
histogram of its pixels over a joint RGB quantisation, so the synthetic shapes dataset's class
colours are separable by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sam2_vitplug.encoders import EncoderFamily, EncoderPreset


class ColorHistogramEncoder(nn.Module):
    """``(B, 3, S, S)`` in [0, 1] -> ``(B, bins**3, S/patch, S/patch)`` per-patch colour histograms."""

    def __init__(self, identity: str, input_size: int = 256, patch: int = 8, bins: int = 4) -> None:
        super().__init__()
        self.identity, self.input_size, self.patch, self.bins = identity, input_size, patch, bins
        self.register_buffer("_anchor", torch.zeros(1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        q = (pixels.clamp(0, 1) * self.bins).long().clamp(max=self.bins - 1)
        index = (q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]
        onehot = F.one_hot(index, self.bins ** 3).permute(0, 3, 1, 2).float()
        return F.avg_pool2d(onehot, self.patch)


@dataclass(frozen=True)
class ColorHistFamily(EncoderFamily):
    def build_matcher(self, name: str, preset: EncoderPreset) -> ColorHistogramEncoder:
        return ColorHistogramEncoder(name, **dict(preset.arch))


COLORHIST = ColorHistFamily(
    name="colorhist",
    description="test-only colour histograms (fewshot tests)",
    model_types=("colorhist",),
    presets=(
        EncoderPreset(name="colorhist_8", encoder_type="colorhist", hf_id="none/colorhist", model_type="colorhist",
                      arch={"input_size": 256, "patch": 8, "bins": 4}),
        EncoderPreset(name="colorhist_coarse", encoder_type="colorhist", hf_id="none/colorhist", model_type="colorhist",
                      arch={"input_size": 256, "patch": 16, "bins": 3}),
    ),
)
