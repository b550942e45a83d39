"Tests for diffuse_nb.optimize: sub-pixel upsampling, conv packing, prepack_for_cpu / unpack on the UNet and the VAE."
import subprocess, sys, warnings

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from diffuse_nb.layers import Upsample2D
from diffuse_nb.optimize import (NearestUpsampleConv2d, PackedConv2d, SubPixelUpsample2D, can_pack_convs, pack_conv_,
                                 prepack_for_cpu, unpack, unpack_conv_, upsample_conv_weights, upsample_nearest_conv3x3)
from diffuse_nb.testing import check_parity, save_reference, tiny_unet, tiny_vae
from diffuse_nb.unet import UNet2DConditionModel
from diffuse_nb.vae import AutoencoderKL

warnings.filterwarnings("ignore", category=FutureWarning)
needs_onednn = pytest.mark.skipif(not can_pack_convs(), reason="this PyTorch build has no oneDNN conv packing")


@pytest.mark.parametrize("C,O,H,W", [(3, 2, 5, 6), (8, 16, 7, 4), (16, 16, 1, 1), (4, 8, 9, 13)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_upsample_equals_interpolate_then_conv(C, O, H, W, channels_last):
    conv, x = nn.Conv2d(C, O, 3, padding=1), torch.randn(2, C, H, W)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with torch.no_grad():
        y = upsample_nearest_conv3x3(xin, conv.weight, conv.bias)
        check_parity(y, conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 1e-5)
    assert y.shape == (2, O, 2 * H, 2 * W)
    if channels_last and H > 1: assert y.is_contiguous(memory_format=torch.channels_last)


def test_phase_kernels_shape_and_gradient():
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    k = upsample_conv_weights(w)
    assert k.shape == (20, 3, 2, 2)
    k.sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 4.0))        # every tap lands in each of the 4 phases once


def test_upsampler_module_reads_weight_at_call_time():
    up = Upsample2D(4); x = torch.randn(1, 4, 3, 5)
    with torch.no_grad(): plain = up(x)
    up.conv.__class__, up.__class__ = NearestUpsampleConv2d, SubPixelUpsample2D
    calls = []
    up.conv.register_forward_pre_hook(lambda m, a: calls.append(m.weight.data_ptr()))
    with torch.no_grad():
        check_parity(up(x), plain, 1e-5)
        want = F.conv2d(F.interpolate(x, size=(7, 9), mode="nearest"), up.conv.weight, up.conv.bias, padding=1)
        check_parity(up(x, output_size=(7, 9)), want, 1e-6)
        up.conv.weight.mul_(0)
        assert up(x).abs().max() == up.conv.bias.abs().max()    # a changed weight is seen on the next call
    assert len(calls) == 3


@needs_onednn
def test_pack_conv_roundtrip():
    for conv in (nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2), nn.Conv2d(8, 8, 1, bias=False),
                 nn.Conv2d(8, 16, 3, padding=1, groups=2)):
        x = torch.randn(2, 8, 9, 11)
        with torch.no_grad():
            plain, sd = conv(x), {k: v.clone() for k, v in conv.state_dict().items()}
            pack_conv_(conv)
            check_parity(conv(x), plain, 1e-5, str(conv))
            assert isinstance(conv, PackedConv2d) and conv.weight.numel() == 0        # packed on the first call
            y = x[:1, :, :5]                                                         # another shape: repacked
            check_parity(conv(y), torch.nn.functional.conv2d(y, sd["weight"], sd.get("bias"), conv.stride,
                                                              conv.padding, conv.dilation, conv.groups), 1e-5)
            check_parity(conv.state_dict(), sd, 0)
            unpack_conv_(conv)
            assert type(conv) is nn.Conv2d and conv.weight.requires_grad
            check_parity(conv(x), plain, 0)


def _unet_inputs(cfg, shape=(2, 4, 16, 24)):
    g = torch.Generator().manual_seed(0)
    cross = cfg["cross_attention_dim"]; cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    kw = dict(sample=torch.randn(shape, generator=g), timestep=torch.tensor([999.0, 3.5]),
              encoder_hidden_states=torch.randn(2, 7, cross, generator=g))
    if cfg.get("addition_embed_type") == "text_time":
        text = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = dict(text_embeds=torch.randn(2, text, generator=g), time_ids=torch.ones(2, 6))
    return kw


SD2_LIKE = dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=(2, 4, 4), cross_attention_dim=48,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), use_linear_projection=True)


@pytest.mark.parametrize("kind,overrides", [("sd", {}), ("sdxl", {}), ("sd", SD2_LIKE),
                                            ("sd", dict(resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.5))])
@pytest.mark.parametrize("pack_weights", [True, False])
def test_prepack_unet(kind, overrides, pack_weights):
    ref = tiny_unet(kind, **overrides)
    m = UNet2DConditionModel.from_pretrained(save_reference(ref))
    kw = _unet_inputs(dict(ref.config))
    with torch.no_grad():
        plain, sd = m(**kw).sample, {k: v.clone() for k, v in m.state_dict().items()}
        assert prepack_for_cpu(m, pack_weights=pack_weights) is m
        assert prepack_for_cpu(m) is m                                       # a second call is a no-op
        out = m(**kw).sample
        check_parity(out, plain, 1e-5, "prepacked vs plain")
        check_parity(out, ref(**kw).sample, 1e-5, "prepacked vs diffusers")
        assert out.is_contiguous()
        check_parity(m.state_dict(), sd, 0, "state_dict")
        assert list(m.state_dict()) == list(sd)
        with torch.enable_grad(): check_parity(m(**kw).sample, plain, 1e-5, "grad mode")
        unpack(m)
        check_parity(m(**kw).sample, plain, 0, "unpacked")
    assert not any(type(b).__name__.startswith(("Fast", "Packed", "SubPixel", "NearestUpsample")) for b in m.modules())
    assert not m._forward_pre_hooks and not m.conv_in._forward_pre_hooks and not m.conv_out._forward_hooks


@pytest.mark.parametrize("overrides", [{}, dict(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                                                up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8, layers_per_block=2)])
def test_prepack_vae(overrides):
    ref = tiny_vae(**overrides)
    m = AutoencoderKL.from_pretrained(save_reference(ref))
    x, z = torch.randn(2, 3, 32, 24), torch.randn(1, 4, 24, 20)
    with torch.no_grad():
        dec, enc, tiled = m.decode(z).sample, m.encode(x).latent_dist.mean, m.decode(z, tiled=True, progress=False).sample
        prepack_for_cpu(m)
        check_parity(m.decode(z).sample, dec, 1e-5, "decode")
        check_parity(m.encode(x).latent_dist.mean, enc, 1e-5, "encode")
        check_parity(m.decode(z, tiled=True, progress=False).sample, tiled, 1e-5, "tiled decode")
        ref.enable_tiling()
        check_parity(m.decode(z, tiled=True, progress=False).sample, ref.decode(z).sample, 1e-5, "tiled vs diffusers")


@needs_onednn
def test_prepacked_model_saves_what_diffusers_loads(tmp_path):
    from diffusers import AutoencoderKL as Ref
    ref = tiny_vae()
    m = prepack_for_cpu(AutoencoderKL.from_pretrained(save_reference(ref)))
    m.save_pretrained(tmp_path / "vae")
    back = Ref.from_pretrained(tmp_path / "vae").eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad(): check_parity(back.decode(z).sample, ref.decode(z).sample, 0, "saved from a prepacked model")


@pytest.mark.parametrize("load_mode", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_prepack_inside_any_mode(load_mode):
    ref = tiny_vae()
    path = save_reference(ref)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad(): want = ref.decode(z).sample
    with load_mode(): m = prepack_for_cpu(AutoencoderKL.from_pretrained(path))
    for run in (torch.inference_mode, torch.no_grad, torch.enable_grad):
        with run(): check_parity(m.decode(z).sample, want, 1e-5, f"{load_mode.__name__} -> {run.__name__}")


def test_refuses_what_it_cannot_speed_up():
    m = AutoencoderKL.from_pretrained(save_reference(tiny_vae()))
    for bad, msg in [(lambda: prepack_for_cpu(m.train()), "training=True"),
                     (lambda: prepack_for_cpu(m.eval().to(torch.bfloat16)), "torch.bfloat16 on cpu")]:
        with pytest.raises(ValueError) as e: bad()
        assert msg in str(e.value) and "model.eval(), model.float() or model.to('cpu')" in str(e.value), str(e.value)


@needs_onednn
def test_any_module():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        plain = seq(x)
        prepack_for_cpu(seq)
        assert sum(isinstance(c, PackedConv2d) for c in seq.modules()) == 2
        check_parity(seq(x), plain, 1e-5)
        unpack(seq)
        check_parity(seq(x), plain, 0)


def test_import_does_not_pull_references():
    code = "import sys, diffuse_nb.optimize; bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
