"Tests for diffuse_nb.quantize: int8 / NF4 codes, encoded layers, quantize_, layerwise casting, offloading."
import copy, re, warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from diffuse_nb.quantize import (NF4_TABLE, STORAGE_DTYPES, DecodedWeight, apply_layerwise_casting,
                                 dequantize_int8, dequantize_nf4, psnr, quantize_, quantize_int8, quantize_nf4,
                                 restore_, weight_bytes, weight_formats)

warnings.filterwarnings("ignore", category=FutureWarning)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 8, 3),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 4, bias=False)).eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("shape", [(7, 5), (4, 3, 3, 3), (3, 2, 5)])
def test_int8_error_within_half_a_step(shape):
    w = torch.randn(shape)
    codes, scale = quantize_int8(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scale.shape == (shape[0],)
    err = (dequantize_int8(codes, scale) - w).abs().flatten(1).amax(1)
    assert (err <= scale / 2 + 1e-6).all()


@pytest.mark.parametrize("numel,block", [(64, 64), (135, 64), (10, 4), (1000, 128)])
def test_nf4_picks_the_nearest_level(numel, block):
    w = torch.randn(numel)
    packed, absmax = quantize_nf4(w, block)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // block) * block // 2
    n = absmax.numel() * block
    blocks = F.pad(w, (0, n - numel)).view(-1, block) / absmax[:, None]
    nearest = NF4_TABLE[(blocks[..., None] - NF4_TABLE).abs().argmin(-1)] * absmax[:, None]
    torch.testing.assert_close(dequantize_nf4(packed, absmax, (numel,)), nearest.flatten()[:numel])


@pytest.mark.parametrize("fmt,min_psnr", [("int8", 40), ("nf4", 18)])
def test_quantize_keeps_outputs_close_and_classes(fmt, min_psnr):
    net = small_net()
    ref = net(X)
    q = quantize_(copy.deepcopy(net), fmt, skip=())
    assert set(weight_formats(q)) == {"0", "3", "5", "6"} and isinstance(q[0], nn.Conv2d)
    assert isinstance(q[0], DecodedWeight) and q[6].bias is None
    with torch.no_grad(): assert psnr(q(X), ref) > min_psnr
    sd = q.state_dict()
    assert sd["0.weight"].dtype == (torch.int8 if fmt == "int8" else torch.uint8) and "0.weight_scale" in sd
    assert not any("_compute" in k for k in sd)
    fresh = quantize_(copy.deepcopy(net), fmt, skip=())
    fresh.load_state_dict(sd, strict=True)            # a quantized state dict loads into a quantized model
    torch.testing.assert_close(fresh(X), q(X))


def test_bytes_of_a_quantized_unet_vs_float16():
    from diffuse_nb.testing import save_reference, tiny_unet
    from diffuse_nb.unet import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(save_reference(tiny_unet("sd"))).eval().half()
    fp16 = weight_bytes(unet)
    ratios = {f: weight_bytes(quantize_(copy.deepcopy(unet), f)) / fp16 for f in ("int8", "nf4")}
    assert 0.45 < ratios["int8"] < 0.6 and 0.25 < ratios["nf4"] < 0.35, ratios
    assert "conv_in" not in weight_formats(quantize_(unet, "int8"))


def test_dtype_changes_keep_the_codes():
    q = quantize_(small_net(), "int8", skip=())
    q.half()
    assert q[0]._buffers["weight"].dtype == torch.int8 and q[0].weight.dtype == torch.float16
    assert q(X.half()).dtype == torch.float16
    c = apply_layerwise_casting(small_net(), torch.float8_e4m3fn, skip=())
    c.to(torch.bfloat16)
    assert c[0]._buffers["weight"].dtype == torch.float8_e4m3fn and c[0].weight.dtype == torch.bfloat16


def test_restore_gives_plain_layers():
    net = small_net()
    q = restore_(quantize_(copy.deepcopy(net), "int8", skip=()))
    assert type(q[0]) is nn.Conv2d and type(q[5]) is nn.Linear and weight_formats(q) == {}
    assert set(q.state_dict()) == set(net.state_dict())
    assert psnr(q(X), net(X)) > 40


@pytest.mark.parametrize("storage", STORAGE_DTYPES)
def test_layerwise_casting_matches_diffusers(storage):
    from diffusers.hooks import apply_layerwise_casting as reference
    net = small_net()
    ours = apply_layerwise_casting(copy.deepcopy(net), storage, skip=())
    ref = copy.deepcopy(net)
    reference(ref, storage, torch.float32, skip_modules_pattern=None, skip_modules_classes=(nn.GroupNorm,))
    with torch.no_grad(): assert torch.equal(ours(X), ref(X))
    assert ours[0]._buffers["weight"].dtype == storage and ours[0]._buffers["bias"].dtype == storage
    assert weight_bytes(ours) < weight_bytes(net) * (0.3 if storage.itemsize == 1 else 0.55)


def test_casting_skips_norms_and_embeddings_by_default():
    from diffuse_nb.testing import save_reference, tiny_unet
    from diffuse_nb.unet import UNet2DConditionModel
    unet = apply_layerwise_casting(UNet2DConditionModel.from_pretrained(save_reference(tiny_unet("sd"))))
    names = weight_formats(unet)
    assert names and not any("norm" in n or "time_embed" in n for n in names)


@pytest.mark.parametrize("make", [lambda m: quantize_(m, "nf4", skip=()),
                                  lambda m: apply_layerwise_casting(m, torch.float8_e5m2, skip=())])
def test_encoded_layers_work_with_block_offloading(make):
    from diffuse_nb.memory import BlockOffloader
    net = make(small_net())
    y = net(X)
    off = BlockOffloader(net, blocks=["0", "3", "5"], device="cpu").attach()
    assert torch.equal(net(X), y)
    assert off.stats["bytes_moved"] < weight_bytes(small_net()) / 3
    off.detach()


def test_quantize_on_cpu_then_move():
    net = quantize_(small_net(), "int8", skip=(), device="cpu")
    assert all(t.device.type == "cpu" for t in net.state_dict().values())


@pytest.mark.parametrize("call,match", [
    (lambda n: quantize_(n, "int4"), "weight_format='int4'"),
    (lambda n: quantize_(n, "nf4", block_size=63), "block_size=63"),
    (lambda n: quantize_(nn.Sequential(nn.LayerNorm(4), nn.GELU())), "no nn.Linear"),
    (lambda n: quantize_(n, skip=(".",)), "no nn.Linear"),
    (lambda n: quantize_("unet"), "needs an nn.Module"),
    (lambda n: quantize_(quantize_(n, skip=()), "nf4", skip=()), "already stored"),
    (lambda n: apply_layerwise_casting(n, torch.int8), "storage_dtype=torch.int8"),
    (lambda n: apply_layerwise_casting(n, "float8_e4m3fn", torch.float64), "compute_dtype"),
    (lambda n: apply_layerwise_casting(n, torch.float32), "storage_dtype"),
])
def test_bad_input_changes_nothing(call, match):
    net = small_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=re.escape(match)): call(net)
    if "already stored" not in match:
        assert weight_formats(net) == {}
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_meta_weights_are_refused():
    with torch.device("meta"): net = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="meta device"): quantize_(net, skip=())


@pytest.mark.parametrize("fmt", ["int8", "cast"])
def test_encoded_unet_with_cpu_prepacking(fmt):
    from diffuse_nb.optimize import prepack_for_cpu, unpack
    from diffuse_nb.testing import save_reference, tiny_unet
    from diffuse_nb.unet import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(save_reference(tiny_unet("sd"))).eval()
    unet = quantize_(unet, "int8") if fmt == "int8" else apply_layerwise_casting(unet, torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 32, generator=g)
    with torch.no_grad():
        y = unet(x, 3, c).sample
        torch.testing.assert_close(prepack_for_cpu(unet)(x, 3, c).sample, y, rtol=0, atol=1e-5)
        torch.testing.assert_close(unpack(unet)(x, 3, c).sample, y, rtol=0, atol=1e-5)
    assert len(weight_formats(unet)) > 50
