"""Exact fast execution of SAM2's prompt decoding for many prompts on one image.

Upstream ``MaskDecoder.predict_masks`` copies the image embedding and its positional encoding
once per prompt (``repeat_interleave``), adds the identical no-mask embedding to every copy,
projects every copy through the attention layers and upsamples every prompt to 256 px. With a
32x32 point grid that is 1,024 copies of a 64x64x256 map: the cost is memory traffic.

:class:`FastMaskDecoder` runs the same modules with the same weights (the upstream
``MaskDecoder``/``TwoWayTransformer``/``PromptEncoder`` instances of the model; nothing is copied
or retrained) in a different execution order:

* per image, once: image tokens + no-mask embedding, the positional encoding, and every
  projection that only sees them (layer 1's key/value/query projections of the unchanged image
  tokens, the projections of the positional encoding, the high-res feature maps in the
  row-wise layout of the upscaling);
* per prompt, only what depends on the prompt. Attention between a prompt's few tokens (8 for
  one point) and the 4,096 image tokens is reassociated so that no per-prompt projection of
  the image tokens is formed: ``softmax(q (W_k x)^T) (W_v x)`` becomes
  ``softmax((q W_k) x^T) x W_v^T`` (projections of 8 tokens instead of 4,096), and the
  image-to-token output projection is applied to the 8 value tokens before mixing;
* the upscaling (two stride-2 transposed convolutions) is a per-token matmul, since every image
  token maps to its own 4x4 block of the 256 px mask, run in token chunks so its
  intermediates stay small; only the mask tokens asked for are multiplied out.

* prompts run in sub-batches (4 at 1024 px) whose per-prompt image tokens live in two reused
  buffers: fresh multi-MiB tensors per prompt page-fault on CPU.

Results equal upstream's up to float32 reassociation (see ``tests/test_decoder_engine.py``
for the stated tolerance).

Reduced precision (``dtype="bf16"``/``"fp16"``, docs/precision.md): the transformer's matmuls,
the per-image projections and the upscaling convolutions run under autocast, and the per-prompt
image tokens (the two work buffers, the reassociated attention's operands) are held in that
dtype, which halves the memory traffic that dominates this stage. These stay fp32: the prompt
encoder (its random Fourier features take ``sin`` of arguments up to ~20, where bf16 rounding
would move the result by ~0.1), the dense positional encoding, the prompt/output token stream
(8 tokens: residual sums are fp32, as upstream's under autocast), the IoU, object-score and
hypernetwork heads (so the ``iou_thr`` test compares fp32 numbers), and the final
hypernetwork x upscaled-features product, accumulated in fp32 into fp32 mask logits. Matmul
kernels accumulate in fp32 internally; softmax and LayerNorm compute in fp32 on bf16 inputs.
fp32 runs exactly the code without autocast. Point (and box-corner) prompts only: there is no mask-input path.
Measured at 1024 px on CPU: 1.9x fewer FLOPs than upstream's execution and 5-8x faster for
the same prompts (docs/benchmarks.md, ``tools/bench_proposals.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import DTYPES, compute_in, full_precision, parse_dtype

# Per-prompt image tokens in flight at once, in bytes: 4 prompts at 1024 px (4 MiB each), more at
# smaller sizes. Chosen by measurement (tools/bench_proposals.py --sweep): on CPU, sub-batches
# beyond a few MiB per buffer fall out of cache and pay page faults on every fresh allocation.
SUB_BATCH_BYTES = 16 * 2**20
UPSCALE_TOKENS = 2048  # prompt x image tokens per chunk of the row-wise upscaling (bounds its memory)


@dataclass
class DecoderOutput:
    """Outputs of one decoder call.

    Attributes:
        masks: ``(B, M, 4h, 4w)`` low-resolution mask logits (256x256 at 1024 px).
        iou: ``(B, M)`` predicted IoU of each returned mask.
        object_score_logits: ``(B, 1)`` object-presence logits (10.0 when the model has no head,
            like upstream).
    """

    masks: torch.Tensor
    iou: torch.Tensor
    object_score_logits: torch.Tensor


@dataclass
class ImageContext:
    """Everything that is identical for every prompt on one image (computed by ``prepare``).

    Shapes use ``N = h * w`` image tokens, ``C`` channels, ``H`` heads, ``d`` head channels.
    """

    src: torch.Tensor  # (N, C) image tokens + no-mask dense embedding (upstream predict_masks: src)
    pe: torch.Tensor  # (N, C) dense positional encoding (PromptEncoder.get_dense_pe)
    size: tuple[int, int]  # (h, w)
    first_k: torch.Tensor  # (H, d, N) layer 1 token->image keys of the unchanged image tokens, scaled
    first_v: torch.Tensor  # (H, N, d) layer 1 token->image values
    first_q: torch.Tensor  # (H, d, N) layer 1 image->token queries, scaled
    pe_k: list[torch.Tensor]  # per later layer + final: (H, d, N) k_proj(pe) (bias included), scaled
    pe_q: list[torch.Tensor]  # per later layer: (H, d, N) q_proj(pe) (bias included), scaled
    up_add1: torch.Tensor  # (N, 4, C1) first transposed-conv bias (+ stride-8 features)
    up_add2: torch.Tensor  # (N, 4, 4, C2) second transposed-conv bias (+ stride-4 features)


def _heads(linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """``(H, d, C_in)`` view of a projection's weight, one slice per head."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.view(num_heads, out_dim // num_heads, in_dim)


def _out_heads(linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """``(H, d, C)`` of an output projection ``(C, H*d)``: what each head's channels add."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.t().reshape(num_heads, in_dim // num_heads, out_dim)


def _split(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(..., H*d)`` -> ``(..., H, d)``."""
    return x.view(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def _passes(iou: torch.Tensor, thr: float, strict: bool) -> torch.Tensor:
    """``iou > thr`` when ``strict`` else ``iou >= thr`` (the scalar compares in ``iou``'s dtype)."""
    return iou > thr if strict else iou >= thr


class FastMaskDecoder:
    """Decode many prompts on one image with a SAM2 model's own prompt encoder and mask decoder.

    ``model`` is a ``SAM2Base``; its ``sam_prompt_encoder`` and ``sam_mask_decoder`` are used as
    they are (weights shared, not copied). Use :meth:`prepare` once per image, then
    :meth:`forward` (upstream ``MaskDecoder.forward`` semantics), :meth:`predict_points` or
    :meth:`best_masks` per batch of prompts. ``dtype``: ``fp32`` (default, exact) or ``bf16``/``fp16``
    (what runs in it and what stays fp32: the module docstring).
    """

    def __init__(self, model: nn.Module, *, sub_batch: int | None = None, upscale_tokens: int = UPSCALE_TOKENS,
                 dtype: str = "fp32") -> None:
        if (sub_batch is not None and sub_batch < 1) or upscale_tokens < 1:
            raise ValueError(f"sub_batch and upscale_tokens must be >= 1, got {sub_batch} and {upscale_tokens}")
        self.compute_dtype = parse_dtype(dtype)
        self._work_dtype = DTYPES[self.compute_dtype]
        self.prompt_encoder = model.sam_prompt_encoder
        h, w = self.prompt_encoder.image_embedding_size
        per_prompt = h * w * self.prompt_encoder.embed_dim * 4
        self.sub_batch = sub_batch or max(1, SUB_BATCH_BYTES // per_prompt)
        self.decoder = model.sam_mask_decoder
        self.upscale_tokens = upscale_tokens
        transformer = self.decoder.transformer
        if len(transformer.layers) < 1:
            raise NotImplementedError("a two-way transformer without layers is not supported")
        self.obj_offset = 1 if self.decoder.pred_obj_scores else 0

    @property
    def _exact(self) -> torch.dtype:
        """The model's own dtype (float32; float64 in the exactness tests): what stays "full precision"."""
        return self.decoder.iou_token.weight.dtype

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        """Autocast to ``compute_dtype`` with the transformer's frozen weights pre-cast (no-op in fp32)."""
        device = self.decoder.iou_token.weight.device
        with compute_in(self.compute_dtype, device, self.decoder.transformer):
            yield

    # ---- per image ---------------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, image_embed: torch.Tensor, high_res_features: Sequence[torch.Tensor] | None = None
                ) -> ImageContext:
        """Shared per-image state from ``image_embed (1, C, h, w)`` and, for models with
        ``use_high_res_features_in_sam``, ``[feat_s0 (1, C/8, 4h, 4w), feat_s1 (1, C/4, 2h, 2w)]``
        (``SAM2ImagePredictor._features``). In reduced precision every tensor of the context is
        held in ``compute_dtype`` (the positional encoding is computed in fp32 first)."""
        with self._compute():
            ctx = self._prepare(image_embed, high_res_features)
        if self._work_dtype == torch.float32:
            return ctx
        cast = lambda t: t.to(self._work_dtype)  # noqa: E731
        return ImageContext(src=cast(ctx.src), pe=cast(ctx.pe), size=ctx.size, first_k=cast(ctx.first_k),
                            first_v=cast(ctx.first_v), first_q=cast(ctx.first_q), pe_k=[cast(t) for t in ctx.pe_k],
                            pe_q=[cast(t) for t in ctx.pe_q], up_add1=cast(ctx.up_add1), up_add2=cast(ctx.up_add2))

    def _prepare(self, image_embed: torch.Tensor, high_res_features: Sequence[torch.Tensor] | None) -> ImageContext:
        dec, penc = self.decoder, self.prompt_encoder
        if image_embed.dim() != 4 or image_embed.shape[0] != 1:
            raise ValueError(f"image_embed must be (1, C, h, w) (one image), got {tuple(image_embed.shape)}")
        _, c, h, w = image_embed.shape
        if (h, w) != tuple(penc.image_embedding_size):
            raise ValueError(f"image_embed is {h}x{w} but the prompt encoder expects "
                             f"{tuple(penc.image_embedding_size)}; use the model's own image features")
        # upstream predict_masks: src = image_embeddings + dense_prompt_embeddings (no-mask embedding,
        # identical for every prompt), pos_src = image_pe; TwoWayTransformer.forward flattens both
        src = (image_embed[0].flatten(1).t() + penc.no_mask_embed.weight).contiguous()
        with full_precision(src.device):  # random Fourier features: sin/cos of large arguments
            pe = penc.get_dense_pe()[0].flatten(1).t().contiguous().to(src.dtype)
        layers = dec.transformer.layers
        first = layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        keys_pe = src + pe

        def heads_of(attn: nn.Module, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
            """``(N, H*d)`` projection -> ``(H, N, d)``, times SDPA's ``d ** -0.5`` when ``scaled``."""
            scale = (attn.internal_dim // attn.num_heads) ** -0.5 if scaled else 1.0
            return (_split(x, attn.num_heads) * scale).transpose(0, 1)

        first_k = heads_of(t2i, t2i.k_proj(keys_pe)).transpose(1, 2).contiguous()
        first_v = heads_of(t2i, t2i.v_proj(src), scaled=False).contiguous()
        first_q = heads_of(i2t, i2t.q_proj(keys_pe)).transpose(1, 2).contiguous()
        pe_k = [heads_of(a, a.k_proj(pe)).transpose(1, 2).contiguous()
                for a in [*(layer.cross_attn_token_to_image for layer in layers[1:]),
                          dec.transformer.final_attn_token_to_image]]
        pe_q = [heads_of(a, a.q_proj(pe)).transpose(1, 2).contiguous()
                for a in (layer.cross_attn_image_to_token for layer in layers[1:])]
        dc1, _, _, dc2, _ = dec.output_upscaling
        c1, c2 = dc1.out_channels, dc2.out_channels
        n = h * w
        add1 = dc1.bias.view(1, 1, c1).expand(n, 4, c1)
        add2 = dc2.bias.view(1, 1, 1, c2).expand(n, 4, 4, c2)
        if dec.use_high_res_features:
            if high_res_features is None or len(high_res_features) != 2:
                raise ValueError("this model uses high-res features in its mask decoder: pass "
                                 "[feat_s0, feat_s1] from SAM2ImagePredictor._features['high_res_feats']")
            feat_s0, feat_s1 = high_res_features
            if tuple(feat_s1.shape) != (1, c1, 2 * h, 2 * w) or tuple(feat_s0.shape) != (1, c2, 4 * h, 4 * w):
                raise ValueError(f"high-res features must be (1, {c2}, {4 * h}, {4 * w}) and (1, {c1}, {2 * h}, "
                                 f"{2 * w}), got {tuple(feat_s0.shape)} and {tuple(feat_s1.shape)}")
            # pixel (2y+a, 2x+b) of the stride-8 map belongs to token (y, x), sub-pixel a*2+b
            add1 = add1 + feat_s1[0].view(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(n, 4, c1)
            # pixel (4y+2a+a2, 4x+2b+b2) of the stride-4 map: token (y, x), sub-pixels (a*2+b, a2*2+b2)
            add2 = add2 + feat_s0[0].view(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(n, 4, 4, c2)
        return ImageContext(src=src, pe=pe, size=(h, w), first_k=first_k, first_v=first_v, first_q=first_q,
                            pe_k=pe_k, pe_q=pe_q, up_add1=add1.contiguous(), up_add2=add2.contiguous())

    # ---- attention, reassociated -------------------------------------------------------------
    def _token_to_image(self, attn: nn.Module, q_in: torch.Tensor, keys: torch.Tensor | None,
                        ctx: ImageContext, pe_k: torch.Tensor | None) -> torch.Tensor:
        """Upstream ``Attention.forward(q=q_in, k=keys + key_pe, v=keys)``: tokens attend to the image.

        ``keys=None`` means the unchanged image tokens of layer 1 (projections from ``ctx``);
        otherwise ``keys (B, N, C)`` are per prompt and ``pe_k`` is ``k_proj(pe)`` of ``attn``."""
        heads = attn.num_heads
        b, t, _ = q_in.shape
        q = _split(attn.q_proj(q_in), heads)  # (B, T, H, d)
        d = q.shape[-1]
        if keys is None:
            qh = q.permute(2, 0, 1, 3).reshape(heads, b * t, d)
            probs = torch.softmax(torch.bmm(qh, ctx.first_k), -1)  # (H, B*T, N)
            out = torch.bmm(probs, ctx.first_v).view(heads, b, t, d).permute(1, 2, 0, 3)
            return attn.out_proj(out.reshape(b, t, heads * d))
        n = keys.shape[1]
        scale = d ** -0.5
        # scores = q . (W_k keys + k_proj(pe)) = (q W_k) . keys + q . k_proj(pe)
        q_wk = torch.einsum("bthd,hdc->bhtc", q * scale, _heads(attn.k_proj, heads)).reshape(b, heads * t, -1)
        qh = q.permute(2, 0, 1, 3).reshape(heads, b * t, d)
        pe_scores = torch.bmm(qh, pe_k).view(heads, b, t, n).transpose(0, 1).reshape(b, heads * t, n)
        probs = torch.softmax(torch.baddbmm(pe_scores, q_wk, keys.transpose(1, 2)), -1)  # (B, H*T, N)
        # values: probs @ (keys W_v^T + b_v) = (probs @ keys) W_v^T + b_v (probability rows sum to 1)
        mixed = torch.bmm(probs, keys).view(b, heads, t, -1)
        out = torch.einsum("bhtc,hdc->bthd", mixed, _heads(attn.v_proj, heads)) + _split(attn.v_proj.bias, heads)
        return attn.out_proj(out.reshape(b, t, heads * d))

    def _image_to_token(self, attn: nn.Module, keys: torch.Tensor | None, tok_k: torch.Tensor, tok_v: torch.Tensor,
                        ctx: ImageContext, pe_q: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        """``keys + Attention.forward(q=keys + key_pe, k=tok_k, v=tok_v)`` (upstream
        ``TwoWayAttentionBlock``'s image-to-token step before ``norm4``) written to ``out (B, N, C)``.

        ``keys=None`` means the unchanged image tokens (layer 1, queries from ``ctx``)."""
        heads = attn.num_heads
        b, t, _ = tok_k.shape
        k = _split(attn.k_proj(tok_k), heads)  # (B, T, H, d)
        v = _split(attn.v_proj(tok_v), heads)
        d = k.shape[-1]
        # out_proj(probs @ v) = probs @ (v W_o,h) summed over heads + b_o; every head's
        # probabilities sum to 1, so b_o / H on each value row adds b_o once
        v_out = torch.einsum("bthd,hdc->bhtc", v, _out_heads(attn.out_proj, heads)) + attn.out_proj.bias / heads
        v_out = v_out.reshape(b, heads * t, -1)
        kh = k.permute(2, 0, 1, 3).reshape(heads, b * t, d)
        if keys is None:
            # (H, B*T, N) -> (B, H, T, N): the softmax over the T tokens then runs along N (fast)
            scores = torch.bmm(kh, ctx.first_q).view(heads, b, t, -1).transpose(0, 1).reshape(b, heads * t, -1)
            residual = ctx.src.unsqueeze(0)
        else:
            # scores = (W_q (keys + pe) + b_q) . k = (k W_q) . keys + q_proj(pe) . k
            k_wq = torch.einsum("bthd,hdc->bhtc", k * d ** -0.5, _heads(attn.q_proj, heads)).reshape(b, heads * t, -1)
            pe_scores = torch.bmm(kh, pe_q).view(heads, b, t, -1).transpose(0, 1).reshape(b, heads * t, -1)
            scores = torch.baddbmm(pe_scores, k_wq, keys.transpose(1, 2))
            residual = keys
        n = scores.shape[-1]
        probs = torch.softmax(scores.view(b, heads, t, n), 2).view(b, heads * t, n)
        dt = out.dtype  # out= ops are not autocast: operands in the buffer's dtype (no-ops in fp32)
        return torch.baddbmm(residual.to(dt), probs.transpose(1, 2).to(dt), v_out.to(dt), out=out)

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``norm(x)`` written into ``out`` (``nn.LayerNorm`` through its aten out-variant)."""
        if type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None \
                and norm.weight.dtype == x.dtype == out.dtype:
            stats = x.new_empty(*x.shape[:-1], 1), x.new_empty(*x.shape[:-1], 1)
            torch.ops.aten.native_layer_norm.out(x, list(norm.normalized_shape), norm.weight, norm.bias, norm.eps,
                                                 out0=out, out1=stats[0], out2=stats[1])
            return out
        return out.copy_(norm(x))

    # ---- transformer ---------------------------------------------------------------------------
    def _transformer(self, ctx: ImageContext, tokens: torch.Tensor, work: tuple[torch.Tensor, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.decoder.transformer
        pre, keys_buf = work
        query_pe, queries, keys = tokens, tokens, None
        for i, layer in enumerate(tr.layers):  # TwoWayAttentionBlock.forward
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            queries = queries + self._token_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys, ctx,
                                                     None if keys is None else ctx.pe_k[i - 1])
            queries = layer.norm2(queries)
            queries = layer.norm3(queries + layer.mlp(queries))
            self._image_to_token(layer.cross_attn_image_to_token, keys, queries + query_pe, queries, ctx,
                                 None if keys is None else ctx.pe_q[i - 1], out=pre)
            keys = self._norm(layer.norm4, pre, keys_buf)
        queries = queries + self._token_to_image(tr.final_attn_token_to_image, queries + query_pe, keys, ctx,
                                                 ctx.pe_k[-1])
        return tr.norm_final_attn(queries), keys

    def _workspace(self, ctx: ImageContext, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two ``(b, N, C)`` buffers reused by every sub-batch: fresh multi-MB tensors per prompt
        cost page faults on CPU (the allocator returns them to the system)."""
        b = min(batch, self.sub_batch)
        n, c = ctx.src.shape
        return ctx.src.new_empty(b, n, c), ctx.src.new_empty(b, n, c)

    @torch.inference_mode()
    def transformer(self, ctx: ImageContext, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream ``TwoWayTransformer.forward`` for ``tokens (B, T, C)`` (output tokens + sparse
        prompt embeddings): returns ``hs (B, T, C)`` and the image tokens ``(B, N, C)``."""
        n, c = ctx.src.shape
        work = ctx.src.new_empty(len(tokens), n, c), ctx.src.new_empty(len(tokens), n, c)
        with self._compute():
            return self._transformer(ctx, tokens, work)

    # ---- heads and upscaling -----------------------------------------------------------------
    def _tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """Upstream ``predict_masks``: [obj score token,] IoU token, mask tokens, then the prompts."""
        dec = self.decoder
        parts = [dec.iou_token.weight, dec.mask_tokens.weight]
        if dec.pred_obj_scores:
            parts.insert(0, dec.obj_score_token.weight)
        out = torch.cat(parts, 0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat((out, sparse.to(out.dtype)), 1)

    def _heads_out(self, hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """IoU predictions ``(B, 1+K)``, object logits ``(B, 1)``, mask tokens ``(B, 1+K, C)``; the
        heads run in fp32 (a few vectors per prompt: the IoU threshold compares fp32 numbers)."""
        dec, s = self.decoder, self.obj_offset
        hs = hs.to(self._exact)
        with full_precision(hs.device):
            iou = dec.iou_prediction_head(hs[:, s])
            mask_tokens = hs[:, s + 1: s + 1 + dec.num_mask_tokens]
            if dec.pred_obj_scores:
                obj = dec.pred_obj_score_head(hs[:, 0])
            else:
                obj = 10.0 * iou.new_ones(iou.shape[0], 1)
        return iou, obj, mask_tokens

    def hyper(self, mask_tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Hypernetwork vectors ``(B, M, C2)`` of mask tokens ``index (B, M)`` (per prompt)."""
        dec = self.decoder
        with full_precision(mask_tokens.device):  # fp32 (see _heads_out)
            out = torch.stack([mlp(mask_tokens[:, i].to(self._exact)) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        return torch.gather(out, 1, index[..., None].expand(-1, -1, out.shape[-1]))

    def upscale(self, ctx: ImageContext, keys: torch.Tensor, hyper: torch.Tensor,
                rows: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits ``(B, M, 4h, 4w)`` = ``hyper (B, M, C2)`` . upscaled ``keys[rows] (B, N, C)``.

        Upstream: ``output_upscaling`` (transposed conv, [+ stride-8 features], LayerNorm2d, GELU,
        transposed conv, [+ stride-4 features], GELU) then ``hyper_in @ upscaled``. Each image
        token owns a 4x4 block of the output, so this runs per chunk of token rows as batched
        matmuls whose intermediates stay small (about ``upscale_tokens`` prompt-tokens). The
        last product, ``hyper`` . upscaled features, runs in fp32 into fp32 logits (in reduced
        precision the convolutions before it run under autocast; the caller's context)."""
        dec = self.decoder
        dc1, ln1, act1, dc2, act2 = dec.output_upscaling
        b, m = hyper.shape[:2]
        c = keys.shape[-1]
        h, w = ctx.size
        c1, c2 = dc1.out_channels, dc2.out_channels
        wdt = ctx.up_add1.dtype  # cast once here, not per chunk of the expanded view (a no-op in fp32)
        w1 = dc1.weight.to(wdt).permute(0, 2, 3, 1).reshape(c, 4 * c1).expand(b, c, 4 * c1)  # (C, [a, b, c1])
        w2 = dc2.weight.to(wdt).permute(0, 2, 3, 1).reshape(c1, 4 * c2).expand(b, c1, 4 * c2)
        hyper_t = hyper.transpose(1, 2)  # (B, C2, M)
        if out is None:
            out = keys.new_empty(b, m, 4 * h, 4 * w, dtype=hyper.dtype)
        grid = out.view(b, m, h, 2, 2, w, 2, 2)  # (B, M, y, a, a2, x, b, b2)
        step = max(1, self.upscale_tokens // max(b * w, 1))  # token rows per chunk
        for y0 in range(0, h, step):
            y1 = min(h, y0 + step)
            start, end = y0 * w, y1 * w
            k = end - start
            chunk = keys[:, start:end] if rows is None else keys[rows, start:end]
            # dc1 + bias (+ stride-8 features) in one batched matmul
            z1 = torch.baddbmm(ctx.up_add1[start:end].view(1, k, 4 * c1), chunk, w1).view(b, k * 4, c1)
            # LayerNorm2d normalises over channels per pixel: F.layer_norm over the last dim
            z1 = act1(F.layer_norm(z1, (c1,), ln1.weight, ln1.bias, ln1.eps))
            z2 = act2(torch.baddbmm(ctx.up_add2[start:end].view(1, k * 4, 4 * c2), z1, w2)).view(b, k * 16, c2)
            with full_precision(z2.device):  # fp32 accumulation and output (no-ops in fp32)
                logits = torch.bmm(z2.to(hyper_t.dtype), hyper_t)  # (B, k*16, M) in (y, x, a, b, a2, b2) order
            grid[:, :, y0:y1].copy_(logits.view(b, y1 - y0, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6))
        return out

    # ---- public entry points -----------------------------------------------------------------
    def _check_sparse(self, ctx: ImageContext, sparse: torch.Tensor) -> None:
        if sparse.dim() != 3 or sparse.shape[-1] != ctx.src.shape[-1]:
            raise ValueError(f"sparse prompt embeddings must be (B, T, {ctx.src.shape[-1]}), got {tuple(sparse.shape)}")

    @torch.inference_mode()
    def forward(self, ctx: ImageContext, sparse: torch.Tensor, multimask_output: bool) -> DecoderOutput:
        """Upstream ``MaskDecoder.forward(..., repeat_image=True)`` for ``sparse (B, T, C)`` prompt
        embeddings and no mask inputs: same mask selection (multimask: masks 1..K; otherwise mask
        0, or the upstream stability fallback when the model enables it). Runs in sub-batches of
        ``sub_batch`` prompts."""
        with self._compute():
            return self._forward(ctx, sparse, multimask_output)

    def _forward(self, ctx: ImageContext, sparse: torch.Tensor, multimask_output: bool) -> DecoderOutput:
        dec = self.decoder
        self._check_sparse(ctx, sparse)
        total = sparse.shape[0]
        dynamic = not multimask_output and dec.dynamic_multimask_via_stability and not dec.training
        work = self._workspace(ctx, total)
        h, w = ctx.size
        masks = ious = objs = None
        for start in range(0, total, self.sub_batch):
            part = sparse[start:start + self.sub_batch]
            b = part.shape[0]
            hs, keys = self._transformer(ctx, self._tokens(part), (work[0][:b], work[1][:b]))
            iou, obj, mask_tokens = self._heads_out(hs)
            k = iou.shape[1]
            index = torch.arange(1 if multimask_output else 0, k if multimask_output or dynamic else 1,
                                 device=iou.device).expand(b, -1)
            if masks is None:
                masks = keys.new_empty(total, index.shape[1], 4 * h, 4 * w, dtype=self._exact)
                ious, objs = iou.new_empty(total, k), obj.new_empty(total, obj.shape[1])
            self.upscale(ctx, keys, self.hyper(mask_tokens, index), out=masks[start:start + b])
            ious[start:start + b], objs[start:start + b] = iou, obj
        if multimask_output:
            return DecoderOutput(masks, ious[:, 1:], objs)
        if dynamic:
            masks, ious = dec._dynamic_multimask_via_stability(masks, ious)
            return DecoderOutput(masks, ious, objs)
        return DecoderOutput(masks, ious[:, :1], objs)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse embeddings ``(B, P+1, C)`` from upstream ``PromptEncoder`` for ``coords (B, P, 2)``
        in model input pixels and ``labels (B, P)`` (1 positive, 0 negative, 2/3 box corners)."""
        if coords.dim() != 3 or coords.shape[-1] != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(f"coords must be (B, P, 2) and labels (B, P), got {tuple(coords.shape)} and "
                             f"{tuple(labels.shape)}")
        with full_precision(coords.device):  # fp32: random Fourier features (module docstring)
            sparse, _ = self.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return sparse

    @torch.inference_mode()
    def predict_points(self, ctx: ImageContext, coords: torch.Tensor, labels: torch.Tensor,
                       multimask_output: bool = True) -> DecoderOutput:
        """``PromptEncoder`` + :meth:`forward` for point prompts (what ``SAM2ImagePredictor._predict``
        runs before its full-resolution upsampling)."""
        return self.forward(ctx, self.embed_points(coords, labels), multimask_output)

    @torch.inference_mode()
    def best_masks(self, ctx: ImageContext, coords: torch.Tensor, labels: torch.Tensor, *,
                   multimask_output: bool = True, iou_thr: float | None = None, iou_strict: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each prompt the returned mask with the highest predicted IoU, dropping those below
        ``iou_thr`` (``iou_strict``: at or below, the reference implementation's ``> thr``):
        ``(logits (K, 4h, 4w), iou (K,), index (K,) into the prompts)``.

        Equal to :meth:`predict_points` followed by the argmax and the threshold (the
        ``SAM2Proposals`` selection), but the upscaling runs only for kept prompts and only for
        their chosen mask token. Logits and IoUs are in the model's dtype (fp32) in every ``dtype``."""
        with self._compute():
            return self._best_masks(ctx, coords, labels, multimask_output, iou_thr, iou_strict)

    def _best_masks(self, ctx: ImageContext, coords: torch.Tensor, labels: torch.Tensor, multimask_output: bool,
                    iou_thr: float | None, iou_strict: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = self.decoder
        sparse = self.embed_points(coords, labels)
        total = sparse.shape[0]
        dynamic = not multimask_output and dec.dynamic_multimask_via_stability and not dec.training
        work = self._workspace(ctx, total)
        logits, scores, index = [], [], []
        for start in range(0, total, self.sub_batch):
            part = sparse[start:start + self.sub_batch]
            b = part.shape[0]
            hs, keys = self._transformer(ctx, self._tokens(part), (work[0][:b], work[1][:b]))
            iou, _, mask_tokens = self._heads_out(hs)
            if dynamic:  # the stability test needs mask 0's logits: all four, then upstream's choice
                every = self.upscale(ctx, keys, self.hyper(mask_tokens, torch.arange(iou.shape[1]).expand(b, -1)))
                sel_masks, sel_iou = dec._dynamic_multimask_via_stability(every, iou)
                keep = torch.arange(b) if iou_thr is None else torch.nonzero(_passes(sel_iou[:, 0], iou_thr, iou_strict)).flatten()
                logits.append(sel_masks[keep, 0])
                scores.append(sel_iou[keep, 0])
            else:
                if multimask_output:
                    best_iou, best = iou[:, 1:].max(1)
                    best = best + 1
                else:
                    best_iou, best = iou[:, 0], torch.zeros(b, dtype=torch.long, device=iou.device)
                keep = torch.arange(b) if iou_thr is None else torch.nonzero(_passes(best_iou, iou_thr, iou_strict)).flatten()
                if len(keep):
                    logits.append(self.upscale(ctx, keys, self.hyper(mask_tokens[keep], best[keep, None]),
                                               rows=keep)[:, 0])
                    scores.append(best_iou[keep])
            index.append(keep + start)
        h, w = ctx.size
        if not logits:
            return (ctx.src.new_zeros(0, 4 * h, 4 * w, dtype=self._exact), ctx.src.new_zeros(0, dtype=self._exact),
                    torch.zeros(0, dtype=torch.long))
        return torch.cat(logits), torch.cat(scores), torch.cat(index)
