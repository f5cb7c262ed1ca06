"""Mask proposals for a target image, behind one small interface.

A :class:`ProposalSource` maps an image to :class:`Proposals`: soft masks on a low-resolution
grid covering the whole image (what scoring and merging use), boxes, predicted IoUs, and a
way to render only the few kept masks at full resolution. Sources: ``sam2`` (point-grid
prompts through SAM2's prompt encoder and mask decoder) and ``ground_truth`` (the COCO masks
of the image, to test scoring alone).

``sam2`` decodes with one of two engines: ``fast`` (default, :mod:`.decoder_engine`: upstream
weights, same outputs within float32 reassociation, no per-prompt copies of the image
embedding, upscaling only for kept prompts) or ``upstream`` (upstream's ``MaskDecoder`` call,
kept for comparison). Optional adaptive prompting (:mod:`.adaptive`) decodes a subset of the
grid. Only 256 px low-res logits are kept per proposal; full resolution is rendered for the
final detections alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..precision import check_dtype, compute_in, full_precision
from .adaptive import AdaptiveConfig, adaptive_decode
from .decoder_engine import FastMaskDecoder
from .features import masks_to_grid
from .references import decode_segmentation

logger = logging.getLogger(__name__)

GT_LOWRES = 128  # ground-truth masks are reduced to this grid, like SAM2's 256 px logits


@dataclass
class Proposals:
    """Candidate masks of one image.

    Attributes:
        lowres: ``(N, h, w)`` mask probabilities in [0, 1] over the whole (square-resized) image.
        boxes: ``(N, 4)`` xyxy boxes in image pixels.
        iou: ``(N,)`` predicted mask quality (1 for ground truth).
        image_size: ``(H, W)`` of the image.
        render: ``indices (k,) -> (k, H, W)`` bool full-resolution masks.
        features: optional ``(C, h', w')`` target features computed on the way (shared backbone).
        stats: counts of the source (``decoded_prompts``, ``kept``, adaptive ``rounds``/``coverage``).
        logits: optional ``(N, h, w)`` raw mask logits (unclamped; the ntt chain thresholds them at 0).
    """

    lowres: torch.Tensor
    boxes: torch.Tensor
    iou: torch.Tensor
    image_size: tuple[int, int]
    render: Callable[[torch.Tensor], torch.Tensor]
    features: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.iou.shape[0])


class ProposalSource(Protocol):
    name: str

    def __call__(self, image: np.ndarray, image_id: int) -> Proposals:
        """``(H, W, 3)`` uint8 image -> its proposals."""
        ...


def boxes_from_masks(masks: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` soft masks (threshold 0.5) -> ``(N, 4)`` xyxy boxes scaled to ``image_size``.

    Empty masks give a zero box."""
    n, h, w = masks.shape
    on = masks > 0.5
    rows, cols = on.any(2), on.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    big = torch.tensor(10**9, device=masks.device)
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1) + 1
    sy, sx = image_size[0] / h, image_size[1] / w
    boxes = torch.stack([x0 * sx, y0 * sy, x1 * sx, y1 * sy], 1).float()
    return torch.where(on.flatten(1).any(1, keepdim=True), boxes, torch.zeros_like(boxes))


class GroundTruthProposals:
    """The annotated masks of each image as proposals (predicted IoU 1), to test scoring alone."""

    name = "ground_truth"

    def __init__(self, coco: dict, lowres: int = GT_LOWRES) -> None:
        self.lowres = lowres
        self._anns: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if not ann.get("iscrowd", 0) and ann.get("segmentation"):
                self._anns.setdefault(int(ann["image_id"]), []).append(ann)

    def __call__(self, image: np.ndarray, image_id: int) -> Proposals:
        height, width = image.shape[:2]
        anns = sorted(self._anns.get(int(image_id), []), key=lambda a: int(a["id"]))
        full = torch.from_numpy(np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns])) \
            if anns else torch.zeros(0, height, width, dtype=torch.bool)
        low = masks_to_grid(full, (self.lowres, self.lowres)) if len(anns) else torch.zeros(0, self.lowres, self.lowres)
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        return Proposals(low, boxes, torch.ones(len(anns)), (height, width), lambda idx: full[idx.cpu()])


def point_grid(points_per_side: int, height: int, width: int) -> np.ndarray:
    """``(n*n, 2)`` xy cell centres of a regular grid over the image, in pixels."""
    offsets = (np.arange(points_per_side) + 0.5) / points_per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)


def point_grid_ntt(points_per_side: int, size: int) -> torch.Tensor:
    """``(n*n, 2)`` xy points ``linspace(0, size - 1, n) + 0.5`` in SAM2 input pixels (border points
    included), row-major (y outer): the reference implementation's grid, which it feeds x-major."""
    lin = torch.linspace(0, size - 1, points_per_side) + 0.5
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


def ntt_square(image: np.ndarray, size: int) -> np.ndarray:
    """``target_resize: ntt``: the image resized to ``size x size`` by PIL bicubic, aspect ignored
    (SAM2's ``_load_img_as_tensor``, which the reference loads targets with)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


ENGINES = ("fast", "upstream")
GRIDS = ("ntt", "cells")
RESIZES = ("ntt", "vitplug")
RENDER_CHUNK = 32  # full-resolution masks upsampled at once (bounds the float intermediate)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SAM2Proposals:
    """Point-grid proposals from a SAM2 model (its prompt encoder and mask decoder).

    Each point is one prompt; prompts run in batches of ``points_batch``; of the multimask
    outputs the one with the best predicted IoU is kept, and masks below ``iou_thr`` dropped.
    Only the 256 px low-res logits are kept; full-resolution masks are rendered for the final
    detections alone.

    ``engine``: ``fast`` (:class:`~.decoder_engine.FastMaskDecoder`, the default) or
    ``upstream`` (upstream ``MaskDecoder`` call, the reference). ``adaptive``: an
    :class:`~.adaptive.AdaptiveConfig` to decode only part of the grid (None: the full grid).
    ``stats`` holds the counts of the last image (``decoded_prompts``, ``kept``, ...).
    ``dtype`` (``fp32`` default and exact, ``bf16``, ``fp16``; checked against the model's
    device): the SAM2 image encoder runs under autocast with pre-cast frozen weights, then its
    features are cast back to fp32; the proposal engine computes in ``dtype`` as
    :class:`~.decoder_engine.FastMaskDecoder` documents (``upstream``: upstream's decoder under
    autocast, prompt encoder in fp32). Logits, IoUs, thresholds, boxes and rendering are fp32.
    ``grid``/``target_resize``/``no_mem_embed``/``iou_strict``: the ntt defaults reproduce the
    reference implementation (``cells``/``vitplug``/True/False: the vitplug preset).

    With ``shared_backbone=True`` the SAM2 trunk must be a ``ViTTrunkMultiScale``: its ViT's
    last-layer patch tokens are captured during the image forward and returned as
    ``Proposals.features`` (one ViT pass serves proposals and scoring).
    """

    name = "sam2"

    def __init__(self, model: torch.nn.Module, *, points_per_side: int = 32, points_batch: int = 64,
                 iou_thr: float = 0.4, multimask: bool = True, shared_backbone: bool = False,
                 engine: str = "fast", adaptive: AdaptiveConfig | None = None, grid: str = "ntt",
                 target_resize: str = "ntt", no_mem_embed: bool = False, iou_strict: bool = True,
                 dtype: str = "fp32") -> None:
        from ..build import make_image_predictor

        first = next(model.parameters(), None)
        self.compute_dtype = check_dtype(dtype, first.device if first is not None else "cpu")
        if points_per_side < 1 or points_batch < 1:
            raise ValueError(f"points_per_side and points_batch must be >= 1, got {points_per_side}, {points_batch}")
        if engine not in ENGINES:
            raise ValueError(f"unknown proposal engine {engine!r}; choose one of {', '.join(ENGINES)} "
                             "(proposals.engine)")
        if grid not in GRIDS or target_resize not in RESIZES:
            raise ValueError(f"proposals.grid={grid!r} / proposals.target_resize={target_resize!r}: choose grid from "
                             f"{', '.join(GRIDS)} and target_resize from {', '.join(RESIZES)}")
        if adaptive is not None and not isinstance(adaptive, AdaptiveConfig):
            raise TypeError(f"adaptive must be an AdaptiveConfig or None, got {type(adaptive).__name__}")
        if adaptive is not None:
            adaptive.check(points_per_side)
        self.model = model
        self.predictor = make_image_predictor(model)
        self.points_per_side = points_per_side
        self.points_batch = points_batch
        self.iou_thr = iou_thr
        self.multimask = multimask
        self.shared_backbone = shared_backbone
        self.engine = engine
        self.adaptive = adaptive
        self.grid, self.target_resize = grid, target_resize
        self.no_mem_embed, self.iou_strict = bool(no_mem_embed), bool(iou_strict)
        self.fast = FastMaskDecoder(model, dtype=self.compute_dtype) if engine == "fast" else None
        self.timings: dict[str, float] = {}
        self.stats: dict[str, float] = {}
        self._captured: dict[str, torch.Tensor] = {}
        if shared_backbone:
            trunk = model.image_encoder.trunk
            if not hasattr(trunk, "vit") or not hasattr(trunk, "num_prefix_tokens"):
                raise ValueError(f"shared_backbone needs a ViTTrunkMultiScale SAM2 trunk, got {type(trunk).__name__}")
            if getattr(trunk, "hr_transforms", None) is not None:
                # the ViT then runs on K shifted/flipped copies: its first batch item is not the image
                raise ValueError("shared_backbone needs a trunk with upsample_mode bilinear or deconv; this one uses "
                                 "transform_avg (its ViT sees transformed copies). Drop --shared-backbone, or build "
                                 "SAM2 with ++model.image_encoder.trunk.upsample_mode=bilinear")
            if not getattr(trunk, "freeze_vit", False):
                logger.warning("shared_backbone with a trunk whose ViT is not frozen: scores use its current weights")
            trunk.vit.register_forward_pre_hook(self._capture_input, with_kwargs=True)
            trunk.vit.register_forward_hook(self._capture_output)

    # ---- shared backbone -------------------------------------------------------------------
    def check_same_weights(self, matcher: Any) -> None:
        """Raise ``ValueError`` unless the SAM2 trunk's ViT holds the matcher's weights (bank
        prototypes were computed with the matcher; scoring with other tokens would be meaningless)."""
        trunk_vit = self.model.image_encoder.trunk.vit
        ours = getattr(matcher, "vit", None)
        if ours is None:
            raise ValueError(f"shared_backbone needs a transformers matcher encoder, got {type(matcher).__name__}")
        a, b = trunk_vit.state_dict(), ours.state_dict()
        differ = sorted(k for k in a.keys() | b.keys()
                        if k not in a or k not in b or a[k].shape != b[k].shape
                        or not torch.equal(a[k].cpu().float(), b[k].cpu().float()))
        if differ:
            raise ValueError(
                f"shared_backbone: the SAM2 trunk's ViT and the matcher encoder '{matcher.identity}' differ in "
                f"{len(differ)} tensors (e.g. {differ[:3]}); use the same weights or drop --shared-backbone"
            )

    def _capture_input(self, module, args, kwargs):
        self._captured["pixel_values"] = kwargs.get("pixel_values", args[0] if args else None)

    def _capture_output(self, module, args, output):
        self._captured["tokens"] = output.last_hidden_state

    def _shared_features(self) -> torch.Tensor:
        trunk = self.model.image_encoder.trunk
        tokens, pixels = self._captured["tokens"], self._captured["pixel_values"]
        gh, gw = pixels.shape[-2] // trunk.patch_size, pixels.shape[-1] // trunk.patch_size
        count = tokens.shape[1]
        if count != trunk.num_prefix_tokens + gh * gw:
            raise RuntimeError(f"captured {count} tokens for a {gh}x{gw} grid with {trunk.num_prefix_tokens} prefix")
        return tokens[0, count - gh * gw:].T.reshape(-1, gh, gw).float()

    # ---- proposals -------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream engine: ``(B, 2)`` points in model input coordinates -> best ``(B, 256, 256)``
        logits and ``(B,)`` IoU.

        The prompt-encoder/mask-decoder calls of upstream ``SAM2ImagePredictor._predict``
        without its full-resolution upsampling, which would materialise B x 3 x H x W floats."""
        model, feats = self.model, self.predictor._features
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
        with full_precision(points.device):  # fp32 prompt encoding (FastMaskDecoder's docstring says why)
            sparse, dense = model.sam_prompt_encoder(points=(points[:, None], labels), boxes=None, masks=None)
            image_pe = model.sam_prompt_encoder.get_dense_pe()
        with compute_in(self.compute_dtype, points.device, model.sam_mask_decoder):
            low, iou, _, _ = model.sam_mask_decoder(
                image_embeddings=feats["image_embed"][-1:], image_pe=image_pe,
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=self.multimask,
                repeat_image=True, high_res_features=[f[-1:] for f in feats["high_res_feats"]],
            )
        best = iou.argmax(1)
        pick = torch.arange(len(best), device=best.device)
        return low[pick, best].float(), iou[pick, best].float()

    def _decoder(self) -> Callable[[torch.Tensor, float | None], tuple[torch.Tensor, torch.Tensor]]:
        """``(points (B, 2) in model input pixels, thr)`` -> ``(K, 256, 256)`` logits and ``(K,)``
        IoUs of the masks with IoU >= thr (None: all), for the chosen engine; the image must be
        set on ``self.predictor``."""
        if self.fast is None:
            def upstream(points: torch.Tensor, thr: float | None) -> tuple[torch.Tensor, torch.Tensor]:
                low, iou = self._decode(points)
                if thr is None:
                    return low, iou
                keep = iou > thr if self.iou_strict else iou >= thr
                return low[keep], iou[keep]

            return upstream
        feats = self.predictor._features
        high_res = [f[-1:] for f in feats["high_res_feats"]] or None
        ctx = self.fast.prepare(feats["image_embed"][-1:], high_res)

        def fast(points: torch.Tensor, thr: float | None) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
            low, iou, _ = self.fast.best_masks(ctx, points[:, None], labels, multimask_output=self.multimask,
                                               iou_thr=thr, iou_strict=self.iou_strict)
            return low.float(), iou.float()

        return fast

    def _batched(self, decode: Callable, points: torch.Tensor, thr: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ious = [], []
        for start in range(0, len(points), self.points_batch):
            low, iou = decode(points[start:start + self.points_batch], thr)
            logits.append(low)
            ious.append(iou)
        return torch.cat(logits), torch.cat(ious)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Image features on ``self.predictor`` (as upstream ``set_image`` leaves them).

        ``target_resize``: ``vitplug`` = upstream's transform (torchvision resize), ``ntt`` = PIL
        bicubic square (:func:`ntt_square`). ``no_mem_embed``: add the model's ``no_mem_embed`` to
        the lowest-resolution features, as upstream's predictor does (the reference does not)."""
        pred, model = self.predictor, self.model
        height, width = image.shape[:2]
        pred.reset_predictor()
        if self.target_resize == "ntt":
            square = ntt_square(image, model.image_size)
            x = torch.from_numpy(square / 255.0).permute(2, 0, 1)[None].float().to(pred.device)
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        else:
            x = pred._transforms(image)[None].to(pred.device)
        with compute_in(self.compute_dtype, x.device, model.image_encoder):
            backbone_out = model.forward_image(x)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        vision_feats = [f.float() for f in vision_feats]  # fp32 from here on (a no-op in fp32)
        if self.no_mem_embed and model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [feat.permute(1, 2, 0).view(1, -1, *size)
                 for feat, size in zip(vision_feats[::-1], pred._bb_feat_sizes[::-1])][::-1]
        pred._features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}
        pred._orig_hw = [(height, width)]
        pred._is_image_set = True

    def _points(self, height: int, width: int) -> tuple[np.ndarray, torch.Tensor]:
        """Row-major grid in image pixels (for adaptive coverage) and the prompts in model input
        pixels; the ntt grid without adaptive prompting runs x-major, as the reference does."""
        device = self.predictor.device
        if self.grid == "ntt":
            size = self.model.image_size
            model_pts = point_grid_ntt(self.points_per_side, size)
            grid = (model_pts * torch.tensor([width / size, height / size])).numpy().astype(np.float32)
            if self.adaptive is None:
                n = self.points_per_side
                model_pts = model_pts.view(n, n, 2).transpose(0, 1).reshape(-1, 2)
            return grid, model_pts.to(device)
        grid = point_grid(self.points_per_side, height, width)
        points = self.predictor._transforms.transform_coords(
            torch.from_numpy(grid).to(device), normalize=True, orig_hw=(height, width))
        return grid, points

    def __call__(self, image: np.ndarray, image_id: int) -> Proposals:
        height, width = image.shape[:2]
        t0 = time.perf_counter()
        self.set_image(image)
        t1 = time.perf_counter()
        grid, points = self._points(height, width)
        decode = self._decoder()
        if self.adaptive is None:
            logits_t, iou_t = self._batched(decode, points, self.iou_thr)
            stats = {"decoded_prompts": float(len(points))}
        else:
            logits_t, iou_t, stats = adaptive_decode(
                lambda idx, thr: self._batched(decode, points[torch.from_numpy(idx).to(points.device)], thr),
                grid, self.points_per_side, height, width, self.adaptive, self.iou_thr)
        raw = logits_t
        logits_t = logits_t.clamp(-32.0, 32.0)
        t2 = time.perf_counter()
        self.timings = {"sam2_encoder": t1 - t0, "prompt_decoding": t2 - t1}
        self.stats = {**stats, "kept": float(len(iou_t))}
        features = self._shared_features() if self.shared_backbone else None
        lowres = torch.sigmoid(logits_t)
        transforms = self.predictor._transforms

        ntt = self.target_resize == "ntt"

        def render(idx: torch.Tensor) -> torch.Tensor:
            if len(idx) == 0:
                return torch.zeros(0, height, width, dtype=torch.bool)
            if ntt:  # the reference: raw logits, bilinear with antialias straight to H x W
                sel = raw[idx.to(raw.device)][:, None]
                # in chunks: the reference renders every NMS survivor (up to 800) for merging, and
                # 800 float maps at full resolution would be ~1 GB at 640 x 480
                return torch.cat([(F.interpolate(part, (height, width), mode="bilinear", align_corners=False,
                                                 antialias=True)[:, 0] > 0).cpu() for part in sel.split(RENDER_CHUNK)])
            sel = logits_t[idx.to(logits_t.device)]
            return (transforms.postprocess_masks(sel[:, None], (height, width))[:, 0] > 0).cpu()

        return Proposals(lowres, boxes_from_masks(lowres, (height, width)), iou_t, (height, width), render, features,
                         dict(self.stats), logits=raw)


def adaptive_from_config(proposals: Any) -> AdaptiveConfig | None:
    """The :class:`~.adaptive.AdaptiveConfig` of a ``proposals`` config section (None when off),
    checked: a bad engine or adaptive setting raises ``ValueError`` before any model is built."""
    p = proposals
    if str(p.engine) not in ENGINES:
        raise ValueError(f"proposals.engine={p.engine!r} is not one of {', '.join(ENGINES)}; "
                         "use --engine fast (default) or --engine upstream")
    if not p.adaptive.enabled:
        return None
    cover_iou = p.adaptive.cover_iou
    adaptive = AdaptiveConfig(start=int(p.adaptive.start), min_gain=float(p.adaptive.min_gain),
                              max_area=float(p.adaptive.max_area),
                              cover_iou=None if cover_iou is None else float(cover_iou),
                              cover_stability=float(p.adaptive.cover_stability))
    adaptive.check(int(p.points_per_side))
    return adaptive


def sam2_proposals_from_config(model: torch.nn.Module, proposals: Any, dtype: str = "fp32") -> SAM2Proposals:
    """:class:`SAM2Proposals` from the ``proposals`` section of ``configs/matching/fewshot.yaml``,
    computing in ``dtype`` (``fp32``/``bf16``/``fp16``; ValueError when the device lacks it)."""
    p = proposals
    adaptive = adaptive_from_config(p)
    return SAM2Proposals(model, points_per_side=int(p.points_per_side), points_batch=int(p.points_batch),
                         iou_thr=float(p.iou_thr), multimask=bool(p.multimask), shared_backbone=bool(p.shared_backbone),
                         engine=str(p.engine), adaptive=adaptive, grid=str(p.grid),
                         target_resize=str(p.target_resize), no_mem_embed=bool(p.no_mem_embed),
                         iou_strict=bool(p.iou_strict), dtype=dtype)


def make_proposal_source(name: str, **kwargs: Any) -> ProposalSource:
    """``sam2`` (needs ``model``) or ``ground_truth`` (needs ``coco``)."""
    if name == "sam2":
        return SAM2Proposals(**kwargs)
    if name == "ground_truth":
        return GroundTruthProposals(**kwargs)
    raise ValueError(f"unknown proposal source {name!r}; choose 'sam2' or 'ground_truth'")
