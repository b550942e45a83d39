"Parity, tiling, sizes and bad-input checks for `diffuse_nb.ltx2_vae` (LTX-2 video VAE) on tiny configs."
import json

import pytest
import torch

from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video, AutoencoderKLLTX2VideoConfig, decoder_plan, encoder_plan
from diffuse_nb.ltx2_vae_blocks import depth_to_space, pad_time, space_to_depth
from diffuse_nb.ltx2_vae_tiling import blend
from diffuse_nb.testing import max_abs_err, randomize_, save_reference

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLLTX2Video as RefVAE  # noqa: E402

ATOL = 1e-4

# Four tiny configs that together take every branch of diffusers' AutoencoderKLLTX2Video (see nbs/17_ltx2_vae).
TINY = dict(
    A=dict(latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1,),
           decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
           decoder_inject_noise=(False, False), downsample_type=("spatial",), upsample_residual=(False,),
           upsample_factor=(1,), patch_size=1, patch_size_t=1),
    B=dict(latent_channels=8, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(16, 32, 64),
           layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 4,
           decoder_inject_noise=(True, False, True, False), upsample_residual=(True,) * 3,
           upsample_factor=(2, 2, 2), timestep_conditioning=True, patch_size=2, decoder_causal=False,
           spatial_compression_ratio=16, temporal_compression_ratio=8),
    C=dict(latent_channels=8, block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 16, 32),
           layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
           decoder_spatio_temporal_scaling=(True,) * 4, decoder_inject_noise=(False,) * 5,
           upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
           upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2), patch_size=2, decoder_causal=True,
           decoder_spatial_padding_mode="zeros", spatial_compression_ratio=16, temporal_compression_ratio=8),
    D=dict(latent_channels=8, block_out_channels=(8, 16), layers_per_block=(1, 2, 1),
           downsample_type=("conv", "temporal"), spatio_temporal_scaling=(True, True),
           decoder_block_out_channels=(8, 16), decoder_layers_per_block=(1, 1, 2),
           decoder_spatio_temporal_scaling=(False, True), upsample_type=("spatial", "spatial"),
           upsample_factor=(1, 1), upsample_residual=False, decoder_inject_noise=False, patch_size=2,
           spatial_compression_ratio=4, temporal_compression_ratio=4))
SHAPES = dict(A=((2, 3, 5, 16, 16), (2, 4, 3, 8, 8)), B=((2, 3, 9, 32, 32), (2, 8, 2, 3, 3)),
              C=((2, 3, 9, 32, 32), (2, 8, 2, 3, 3)), D=((1, 3, 9, 16, 16), (1, 8, 3, 4, 4)))
LTX2 = dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8)   # + class defaults
LTX23 = dict(LTX2, block_out_channels=(256, 512, 1024, 1024), decoder_block_out_channels=(256, 512, 512, 1024),
             layers_per_block=(4, 6, 4, 2, 2), decoder_layers_per_block=(4, 6, 4, 2, 2),
             decoder_spatio_temporal_scaling=(True,) * 4, decoder_inject_noise=(False,) * 5,
             upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
             upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2), decoder_spatial_padding_mode="zeros")


def reference(name, seed=0):
    ref = randomize_(RefVAE(**TINY[name]).eval(), seed=seed)
    if ref.decoder.timestep_scale_multiplier is not None: ref.decoder.timestep_scale_multiplier.data.fill_(1000.0)
    g = torch.Generator().manual_seed(seed)
    ref.latents_mean.copy_(torch.randn(ref.latents_mean.shape, generator=g))
    ref.latents_std.copy_(torch.rand(ref.latents_std.shape, generator=g) + 0.5)
    return ref


_PAIRS = {}
def pair(name):
    "(ours, diffusers) with the same weights, ours loaded strictly from diffusers' save_pretrained folder."
    if name not in _PAIRS:
        ref = reference(name)
        _PAIRS[name] = AutoencoderKLLTX2Video.from_pretrained(save_reference(ref)), ref
    return _PAIRS[name]


def inputs(name, seed=1):
    xs, zs = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    x, z = torch.rand(xs, generator=g) * 2 - 1, torch.randn(zs, generator=g)
    t = torch.tensor([0.05, 0.3][: zs[0]]) if TINY[name].get("timestep_conditioning") else None
    return x, z, t


def seeded(fn, seed=0):
    torch.manual_seed(seed)
    return fn()


# ---- parity with diffusers
@pytest.mark.parametrize("name", list(TINY))
def test_encode_decode_forward_parity(name):
    ours, ref = pair(name)
    x, z, t = inputs(name)
    with torch.no_grad():
        po, pr = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        assert max_abs_err((po.mean, po.logvar), (pr.mean, pr.logvar)) <= ATOL
        assert max_abs_err(seeded(lambda: ours.decode(z, t).sample), seeded(lambda: ref.decode(z, t).sample)) <= ATOL
        assert max_abs_err(seeded(lambda: ours(x, t).sample), seeded(lambda: ref(x, t).sample)) <= ATOL
        tup = seeded(lambda: ours.decode(z, t, return_dict=False))
        assert isinstance(tup, tuple) and max_abs_err(tup[0], seeded(lambda: ref.decode(z, t).sample)) <= ATOL


def test_noise_injection_draws_the_same_noise_and_differs_without_seed():
    ours, ref = pair("B")
    _, z, t = inputs("B")
    with torch.no_grad():
        a, b = seeded(lambda: ours.decode(z, t).sample, 3), seeded(lambda: ours.decode(z, t).sample, 4)
        assert max_abs_err(a, b) > 1e-3                              # the noise matters ...
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert max_abs_err(ours.decode(z, t, generator=g1).sample, ours.decode(z, t, generator=g2).sample) == 0


def test_causal_override_and_causality():
    ours, ref = pair("B")
    _, z, t = inputs("B")
    with torch.no_grad():                                             # B's decoder is non-causal by config
        assert max_abs_err(seeded(lambda: ours.decode(z, t, causal=True).sample),
                           seeded(lambda: ref.decode(z, t, causal=True).sample)) <= ATOL
        x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
        x2 = x.clone(); x2[:, :, 9:] = torch.rand(1, 3, 8, 32, 32)   # change the future only
        m, m2 = ours.encode(x).latent_dist.mean, ours.encode(x2).latent_dist.mean
        assert max_abs_err(m[:, :, :2], m2[:, :, :2]) <= 1e-6        # latents of frames 0..8 do not see 9..16
        assert max_abs_err(m[:, :, 2:], m2[:, :, 2:]) > 1e-3
        m3 = ours.encode(x, causal=False).latent_dist.mean          # explicit False is obeyed (diffusers ignores it)
        assert max_abs_err(m, m3) > 1e-4


def test_slicing_and_modes():
    ours, _ = pair("C")
    x, z, _ = inputs("C")
    with torch.no_grad():
        whole = ours.decode(z).sample
        ours.enable_slicing()
        try: assert max_abs_err(ours.decode(z).sample, whole) <= 1e-5
        finally: ours.disable_slicing()
    with torch.inference_mode(): assert max_abs_err(ours.decode(z).sample, whole) <= 1e-6
    out = ours.decode(z.requires_grad_()).sample
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---- tiling
def copy_tiling(ours, ref):
    for k in ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_min_num_frames",
              "tile_sample_stride_height", "tile_sample_stride_width", "tile_sample_stride_num_frames"):
        setattr(ref, k, getattr(ours, k))
    ref.use_tiling, ref.use_framewise_decoding = ours.use_tiling, ours.use_framewise_decoding


def test_tiled_parity_space_and_time():
    ours, ref = pair("C")
    try:
        ours.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48,
                           tile_sample_stride_width=48, tile_sample_min_num_frames=16,
                           tile_sample_stride_num_frames=8, temporal=True)
        copy_tiling(ours, ref)
        z = torch.randn(1, 8, 4, 4, 12, generator=torch.Generator().manual_seed(4))
        x = torch.rand(1, 3, 25, 96, 128, generator=torch.Generator().manual_seed(5)) * 2 - 1
        with torch.no_grad():
            dec = ours.decode(z, progress=False).sample
            assert dec.shape == (1, 3, 25, 64, 192)
            assert max_abs_err(dec, ref.decode(z).sample) <= ATOL
            assert max_abs_err(dec, ours.decoder(z)) > 1e-3           # really tiled
            assert max_abs_err(ours.encode(x, progress=False).latent_dist.mean, ref.encode(x).latent_dist.mean) <= ATOL
            ours.use_tiling = ref.use_tiling = False                  # time tiles only
            assert max_abs_err(ours.decode(z, progress=False).sample, ref.decode(z).sample) <= ATOL
    finally:
        ours.disable_tiling(); ref.use_tiling = ref.use_framewise_decoding = False


def test_tiled_parity_timestep_noise():
    ours, ref = pair("B")
    try:
        ours.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_sample_stride_height=32,
                           tile_sample_stride_width=32)
        copy_tiling(ours, ref)
        z, t = torch.randn(2, 8, 2, 4, 6), torch.tensor([0.05, 0.2])
        with torch.no_grad():
            assert max_abs_err(seeded(lambda: ours.decode(z, t, progress=False).sample),
                               seeded(lambda: ref.decode(z, t).sample)) <= ATOL
            assert max_abs_err(seeded(lambda: ours.tiled_decode(z, t, progress=False).sample),
                               seeded(lambda: ref.tiled_decode(z, t).sample)) <= ATOL
    finally:
        ours.disable_tiling(); ref.use_tiling = False


@pytest.mark.parametrize("e", [0, 1, 3, 6, 20])
def test_blend_bit_exact(e):
    ref = RefVAE(**TINY["A"])
    a, b = torch.randn(1, 2, 6, 7, 9), torch.randn(1, 2, 6, 7, 9)
    for dim, fn in ((2, ref.blend_t), (3, ref.blend_v), (4, ref.blend_h)):
        assert torch.equal(blend(a, b.clone(), e, dim), fn(a, b.clone(), e))


# ---- sizes
def test_full_size_parameter_counts_on_meta():
    with torch.device("meta"):
        big, big_ref = AutoencoderKLLTX2Video.from_config(LTX2), RefVAE(**LTX2)
        v23, v23_ref = AutoencoderKLLTX2Video.from_config(LTX23), RefVAE(**LTX23)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(big) == n(big_ref) == 1_222_479_601
    assert n(v23) == n(v23_ref) == 726_105_969
    for a, b in ((big, big_ref), (v23, v23_ref)):
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert big.config.encoder_compression == big.config.decoder_expansion == (8, 32)
    assert v23.config.decoder_expansion == (8, 32)
    assert big.latent_shape(121, 512, 768) == (128, 16, 16, 24)


def test_save_pretrained_round_trip_loads_in_diffusers(tmp_path):
    ours, ref = pair("D")
    path = ours.save_pretrained(tmp_path / "vae")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKLLTX2Video"
    back = RefVAE.from_pretrained(path).eval()
    _, z, _ = inputs("D")
    with torch.no_grad(): assert max_abs_err(back.decode(z).sample, ours.decode(z).sample) <= ATOL


def test_prepare_decode_and_scaling():
    ours, ref = pair("B")
    from diffusers import LTX2Pipeline
    _, z, _ = inputs("B")
    expected = LTX2Pipeline._normalize_latents(z, ref.latents_mean, ref.latents_std)
    assert max_abs_err(ours.scale_latents(z), expected) <= 1e-6
    assert max_abs_err(ours.unscale_latents(ours.scale_latents(z)), z) <= 1e-5
    zn, tn = ours.prepare_decode(z, 0.05, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    assert max_abs_err(zn, 0.95 * z + 0.05 * noise) <= 1e-6 and tn.tolist() == pytest.approx([0.05, 0.05])
    zc, tc = pair("C")[0].prepare_decode(z)                            # not timestep-conditioned: unchanged
    assert zc is z and tc is None


def test_resampling_helpers():
    v = torch.randn(2, 3, 4, 6, 8)
    for s in [(1, 2, 2), (2, 1, 1), (2, 2, 2)]:
        assert torch.equal(depth_to_space(space_to_depth(v, s), s), v)
    x = torch.arange(4.0).view(1, 1, 4, 1, 1)
    assert pad_time(x, 3, True).flatten().tolist() == [0, 0, 0, 1, 2, 3]
    assert pad_time(x, 3, False).flatten().tolist() == [0, 0, 1, 2, 3, 3]


# ---- bad input: clear errors before compute
@pytest.fixture(scope="module")
def big():
    with torch.device("meta"): return AutoencoderKLLTX2Video.from_config(LTX2)


meta = lambda *s: torch.empty(*s, device="meta")
BAD = [
    ("frames 120", lambda m: m.encode(meta(1, 3, 120, 512, 768)), ValueError, "num_frames=120 is not 8·k + 1"),
    ("frames 8", lambda m: m.encode(meta(1, 3, 8, 512, 768)), ValueError, "nearest valid: 1 or 9"),
    ("height 500", lambda m: m.encode(meta(1, 3, 121, 500, 768)), ValueError, "height=500 is not a multiple of the spatial compression 32"),
    ("width 770", lambda m: m.encode(meta(1, 3, 121, 512, 770)), ValueError, "width=770"),
    ("4 colour channels", lambda m: m.encode(meta(1, 4, 9, 64, 64)), ValueError, "expects 3 colour channels"),
    ("4-D video", lambda m: m.encode(meta(1, 3, 64, 64)), ValueError, "add a frame axis"),
    ("numpy video", lambda m: m.encode(torch.zeros(1, 3, 9, 64, 64).numpy()), TypeError, "must be a torch.Tensor"),
    ("latent channels", lambda m: m.decode(meta(1, 64, 2, 4, 4)), ValueError, "expects 128 latent channels"),
    ("latent 1 wide, reflect", lambda m: m.decode(meta(1, 128, 2, 4, 1)), ValueError, "needs ≥ 2"),
    ("latent 3-D", lambda m: m.decode(meta(128, 4, 4)), ValueError, "(B, C, F, H, W)"),
    ("num_frames 0", lambda m: m.latent_shape(0, 64, 64), ValueError, "num_frames=0 must be a positive int"),
    ("tile not multiple", lambda m: m.enable_tiling(tile_sample_min_height=500), ValueError, "multiple of the compression 32"),
    ("stride > tile", lambda m: m.enable_tiling(tile_sample_stride_width=640), ValueError, "tiles would leave gaps"),
    ("frames tile", lambda m: m.enable_tiling(tile_sample_min_num_frames=12), ValueError, "must be a multiple of the compression 8"),
    ("tile float", lambda m: m.enable_tiling(tile_sample_min_width=512.0), ValueError, "must be a positive int"),
    ("tile zero", lambda m: m.enable_tiling(tile_sample_stride_height=0), ValueError, "must be a positive int"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_calls(big, name, call, exc, msg):
    before = {k: getattr(big, k) for k in ("tile_sample_min_height", "tile_sample_stride_width", "use_tiling")}
    with pytest.raises(exc) as e: call(big)
    assert msg in str(e.value), str(e.value)
    assert before == {k: getattr(big, k) for k in before}             # a refused setting changes nothing


def test_bad_timestep_and_tile_attributes():
    ours, _ = pair("B")
    z = torch.randn(2, 8, 2, 4, 5)
    with pytest.raises(ValueError, match="timestep-conditioned"): ours.decode(z)
    with pytest.raises(ValueError, match="temb has 3 values for a batch of 2"): ours.decode(z, torch.ones(3))
    ours.tile_sample_stride_height = 40                               # set directly: checked when tiling runs
    try:
        with pytest.raises(ValueError, match="tile_sample_stride_height=40"): ours.tiled_decode(z, 0.05)
    finally: ours.tile_sample_stride_height = 448
    ours.enable_tiling(tile_sample_min_height=48, tile_sample_min_width=48, tile_sample_stride_height=32,
                       tile_sample_stride_width=32)
    try:
        with pytest.raises(ValueError, match="last tile of 1 latent"): ours.decode(z, 0.05)   # width 5: 0, 2, 4
    finally: ours.disable_tiling()


BAD_CONFIGS = [
    (dict(block_out_channels=(256, 512, 12, 2048)), "divisible by 8"),
    (dict(downsample_type=("spatial", "bogus", "spatiotemporal", "spatiotemporal")), "downsample_type[1]='bogus'"),
    (dict(upsample_type=("spatiotemporal", "sideways", "spatiotemporal")), "upsample_type[1]='sideways'"),
    (dict(layers_per_block=(4, 6)), "layers_per_block=(4, 6) has 2 entries"),
    (dict(decoder_inject_noise=(False, False)), "decoder_inject_noise"),
    (dict(patch_size_t=2), "patch_size_t=2"),
    (dict(decoder_spatial_padding_mode="mirror"), "decoder_spatial_padding_mode='mirror'"),
    (dict(latent_channels=0), "latent_channels=0"),
    (dict(spatio_temporal_scaling=(True, False, True, True)), "keeps its 256 input channels"),
    (dict(upsample_factor=(2, 2, 3)), "upsample_factor 3 must divide"),
    (dict(down_block_types=("DownEncoderBlock2D",) * 4), "only 'LTX2VideoDownBlock3D'"),
]


@pytest.mark.parametrize("overrides,msg", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs(overrides, msg):
    with pytest.raises(ValueError) as e: AutoencoderKLLTX2VideoConfig(**overrides)
    assert msg in str(e.value), str(e.value)


def test_plans_match_diffusers_modules():
    "The plans name the widths diffusers builds (checked on LTX-2.3, whose decoder mixes factors 1 and 2)."
    with torch.device("meta"): ref = RefVAE(**LTX23)
    c = AutoencoderKLLTX2VideoConfig(**LTX23)
    for b, up in zip(decoder_plan(c)["blocks"], ref.decoder.up_blocks):
        assert up.resnets[0].conv1.in_channels == b["out_channels"]
    blocks, mid = encoder_plan(c)
    assert [b["out_channels"] for b in blocks] == [256, 512, 1024, 1024] and mid == 2


# ---- CPU speed: packed conv weights
def test_prepack_for_cpu_same_outputs_and_keys():
    from diffuse_nb.ltx2_vae import PackedConv3d
    ref = reference("B")
    ours = AutoencoderKLLTX2Video.from_pretrained(save_reference(ref))
    x, z, t = inputs("B")
    with torch.no_grad():
        before, enc = seeded(lambda: ours.decode(z, t).sample), ours.encode(x).latent_dist.mean
        sd = {k: v.clone() for k, v in ours.state_dict().items()}
        ours.prepack_for_cpu()
        for _ in range(2):                                            # the second call at a size runs packed
            assert max_abs_err(seeded(lambda: ours.decode(z, t).sample), before) <= 1e-5
            assert max_abs_err(ours.encode(x).latent_dist.mean, enc) <= 1e-5
        packed = [m for m in ours.modules() if isinstance(m, PackedConv3d) and m._packed_for is not None]
        assert len(packed) > 0
        assert list(ours.state_dict()) == list(sd) and max_abs_err(ours.state_dict(), sd) == 0
    out = ours.decode(z.clone().requires_grad_(), t).sample           # with gradients: plain convs
    out.sum().backward()
    ours.unpack()
    assert not any(isinstance(m, PackedConv3d) for m in ours.modules())
    with torch.no_grad(): assert max_abs_err(seeded(lambda: ours.decode(z, t).sample), before) == 0
