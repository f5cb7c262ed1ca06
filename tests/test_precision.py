"""Unit tests of ``sam2_vitplug.precision``: dtype names, device checks, the autocast and
full-precision contexts, and the pre-cast weight swap (which must give autocast's own numbers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sam2_vitplug import precision as P


def test_parse_dtype_names_aliases_and_torch_dtypes():
    assert P.parse_dtype(None) == "fp32"
    assert [P.parse_dtype(n) for n in ("fp32", "BF16", " fp16 ", "bfloat16", "half", "float")] == \
        ["fp32", "bf16", "fp16", "bf16", "fp16", "fp32"]
    assert [P.parse_dtype(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError, match=r"^--dtype 'int8' is not a dtype; use one of fp32, bf16, fp16$"):
        P.parse_dtype("int8")
    with pytest.raises(ValueError, match="not supported"):
        P.parse_dtype(torch.float64)


def test_check_dtype_per_device():
    assert P.check_dtype("bf16", "cpu") == "bf16" and P.check_dtype(None, "cpu") == "fp32"
    with pytest.raises(ValueError) as err:
        P.check_dtype("fp16", "cpu")
    assert "\n" not in str(err.value) and "use --dtype bf16 on a CPU" in str(err.value)
    with pytest.raises(ValueError, match="MPS"):
        P.check_dtype("bf16", "mps")
    assert isinstance(P.cpu_fast_bf16(), bool)


def test_check_dtype_on_cuda_follows_the_gpus_bf16_support(monkeypatch):
    """The CUDA branch without a GPU: the answer comes from torch's own bf16 query."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.check_dtype("fp16", "cuda:0") == "fp16" and P.check_dtype("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match=r"^--dtype bf16: Old GPU has no bf16 support; use --dtype fp16$"):
        P.check_dtype("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.check_dtype("bf16", "cuda") == "bf16"


def test_cpu_fast_bf16_asks_torchs_capability_query(monkeypatch):
    for amx, avx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx, raising=False)
        assert P.cpu_fast_bf16() is (amx or avx)


def test_autocast_is_a_no_op_in_fp32_and_full_precision_leaves_it():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    with P.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (x @ w).dtype == torch.float32
    with P.autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
        with P.full_precision("cpu"):
            assert (x @ w).dtype == torch.float32
        assert (x @ w).dtype == torch.bfloat16


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.fc(self.norm(y))


def _frozen(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    net = _Net().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_lowp_weights_gives_autocasts_numbers_and_restores_the_weights():
    net, x = _frozen(), torch.randn(2, 3, 9, 9)
    before = {n: p for n, p in net.named_parameters()}
    with torch.inference_mode(), P.autocast("bf16", "cpu"):
        plain = net(x)
        with P.lowp_weights(net, "bf16"):
            assert net.fc.weight.dtype == torch.bfloat16 and net.fc.bias.dtype == torch.bfloat16
            assert net.norm.weight.dtype == torch.float32  # LayerNorm is not a matmul: left alone
            assert net.conv.weight.dtype == torch.float32  # convs too: DINOv3 reads their dtype
            swapped = net(x)
    assert plain.dtype == torch.bfloat16 and torch.equal(plain, swapped)  # same cast, done once
    assert all(p is before[n] for n, p in net.named_parameters())  # the originals are back
    with P.lowp_weights(net, "fp32"), P.precast(False):
        assert net.fc.weight.dtype == torch.float32


def test_lowp_weights_cache_is_reused_and_refreshed_after_an_in_place_change():
    net = _frozen()
    with P.lowp_weights(net, "bf16"):
        first = net.fc.weight
    with P.lowp_weights(net, "bf16"):
        assert net.fc.weight is first  # cached: no second cast
    with torch.no_grad():
        net.fc.weight.mul_(2.0)  # e.g. a checkpoint loaded after the first call
    with P.lowp_weights(net, "bf16"):
        assert torch.equal(net.fc.weight, (first.float() * 2).bfloat16())
    with P.precast(False), P.lowp_weights(net, "bf16"):
        assert net.fc.weight.dtype == torch.float32  # benchmarks can switch the swap off


def test_lowp_weights_skips_trainable_weights_only_while_grad_is_on():
    net = _frozen()
    net.fc.weight.requires_grad_(True)
    with P.lowp_weights(net, "bf16"):
        assert net.fc.weight.dtype == torch.float32 and net.fc.bias.dtype == torch.bfloat16
    with torch.inference_mode(), P.lowp_weights(net, "bf16"):  # inference: nothing can train it
        assert net.fc.weight.dtype == torch.bfloat16
    assert net.fc.weight.dtype == torch.float32 and net.fc.weight.requires_grad


def test_lowp_weights_nested_calls_share_one_swap():
    net = _frozen()
    original = net.fc.weight
    with P.lowp_weights(net, "bf16"):
        outer = net.fc.weight
        with P.lowp_weights(net, "bf16"):
            assert net.fc.weight is outer
        assert net.fc.weight is outer  # the inner exit does not restore under the outer call
    assert net.fc.weight is original


def test_lowp_weights_keep_false_drops_the_copies_and_a_new_dtype_replaces_them():
    """``keep=False`` (the HR memory plan's per-call copies) leaves nothing cached after the call;
    switching dtype keeps one set of copies, not one per dtype."""
    net = _frozen()
    cache = lambda: net.__dict__.get("_sam2_vitplug_lowp_cache") or {}  # noqa: E731
    with P.lowp_weights(net, "bf16"):
        with P.lowp_weights(net, "bf16", keep=False):  # nested: shares the outer swap
            assert net.fc.weight.dtype == torch.bfloat16
    assert not cache() and net.fc.weight.dtype == torch.float32
    with P.lowp_weights(net, "bf16"):
        pass
    assert list(cache()) == [torch.bfloat16]
    with P.lowp_weights(net, "fp16"):
        assert net.fc.weight.dtype == torch.float16
    assert list(cache()) == [torch.float16]
    P.drop_lowp_weights(net)
    assert not cache()


def test_lowp_bytes_counts_what_lowp_weights_copies():
    net = _frozen()
    linear = sum(p.numel() for p in net.fc.parameters())
    assert P.lowp_bytes(net, "bf16") == 2 * linear and P.lowp_bytes(net, "fp32") == 0
    with P.precast(False):
        assert P.lowp_bytes(net, "bf16") == 0
    net.fc.weight.requires_grad_(True)
    assert P.lowp_bytes(net, "bf16", grad=True) == 2 * net.fc.bias.numel()
    assert P.lowp_bytes(net, "bf16", grad=False) == 2 * linear


def test_compute_in_is_autocast_plus_the_precast_weights():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).requires_grad_(False)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    with P.compute_in("fp32", "cpu", net):  # nothing at all: fp32 weights, fp32 math
        assert net[0].weight.dtype == torch.float32 and torch.equal(net(x), nn.Sequential(*net)(x))
    with P.precast(False), P.autocast("bf16", "cpu"):
        plain = net(x)
    with P.compute_in("bf16", "cpu", net):
        assert net[0].weight.dtype == torch.bfloat16
        assert torch.equal(net(x), plain)
    assert net[0].weight.dtype == torch.float32
