"Bad-input table, config sweep, tiling/slicing and loading checks for `diffuse_nb.vae` (tiny configs, fast)."
import json
import pytest
import torch

from diffuse_nb.vae import (AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution, UpDecoderBlock2D,
                            blend_h, blend_v)
from diffuse_nb.layers import Upsample2D
from diffuse_nb.testing import max_abs_err, save_reference, tiny_vae, tiny_vae_config
from diffuse_nb.weights import CheckpointError

ATOL = 1e-4




@pytest.fixture(scope="module")
def tiny():
    return AutoencoderKL.from_config(tiny_vae_config()).eval()


def pair(**overrides):
    ref = tiny_vae(**overrides)
    return AutoencoderKL.from_pretrained(save_reference(ref)), ref


# ---- bad input: clear errors before compute
BAD_CALLS = [
    ("encode: 4 channels", lambda m: m.encode(torch.randn(1, 4, 32, 32)), ValueError, "this VAE expects 3"),
    ("encode: odd H", lambda m: m.encode(torch.randn(1, 3, 31, 32)), ValueError, "multiples of 2"),
    ("encode: odd W", lambda m: m.encode(torch.randn(1, 3, 32, 17)), ValueError, "multiples of 2"),
    ("encode: 3-D", lambda m: m.encode(torch.randn(3, 32, 32)), ValueError, "(B, C, H, W)"),
    ("encode: numpy", lambda m: m.encode(torch.randn(1, 3, 8, 8).numpy()), TypeError, "must be a torch.Tensor"),
    ("decode: 3 channels", lambda m: m.decode(torch.randn(1, 3, 8, 8)), ValueError, "this VAE expects 4"),
    ("decode: 5-D", lambda m: m.decode(torch.randn(1, 4, 1, 8, 8)), ValueError, "(B, C, H, W)"),
    ("decode: list", lambda m: m.decode([1.0]), TypeError, "must be a torch.Tensor"),
    ("tiled_decode: channels", lambda m: m.tiled_decode(torch.randn(1, 2, 8, 8)), ValueError, "this VAE expects 4"),
    ("tile size not multiple", lambda m: m.enable_tiling(tile_sample_min_size=33), ValueError, "multiple of the downscale factor"),
    ("tile sizes disagree", lambda m: m.enable_tiling(tile_sample_min_size=32, tile_latent_min_size=8), ValueError, "disagree"),
    ("tile size zero", lambda m: m.enable_tiling(tile_latent_min_size=0), ValueError, "positive int"),
    ("tile size float", lambda m: m.enable_tiling(tile_sample_min_size=32.0), ValueError, "positive int"),
    ("overlap 1", lambda m: m.enable_tiling(tile_overlap_factor=1.0), ValueError, "in [0, 1)"),
    ("overlap negative", lambda m: m.enable_tiling(tile_overlap_factor=-0.1), ValueError, "in [0, 1)"),
    ("overlap str", lambda m: m.enable_tiling(tile_overlap_factor="0.25"), ValueError, "in [0, 1)"),
    ("no stride", lambda m: m.enable_tiling(tile_sample_min_size=2, tile_overlap_factor=0.5), ValueError, "no stride"),
    ("decode: float64", lambda m: m.decode(torch.randn(1, 4, 8, 8, dtype=torch.float64)), TypeError, "z.to(torch.float32)"),
    ("encode: float16", lambda m: m.encode(torch.randn(1, 3, 8, 8).half()), TypeError, "model.to(torch.float16)"),
    ("generators vs batch", lambda m: DiagonalGaussianDistribution(torch.randn(2, 8, 2, 2)).sample([torch.Generator()]),
     ValueError, "1 generators for a batch of 2"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_calls(tiny, name, call, exc, msg):
    with pytest.raises(exc) as e: call(tiny)
    assert msg in str(e.value), str(e.value)


def test_bad_attribute_tiling_checked_at_call(tiny):
    "Tile settings assigned directly (diffusers style) are checked when tiling runs, before any compute."
    m = AutoencoderKL.from_config(tiny_vae_config())
    m.tile_overlap_factor = 1.5
    with pytest.raises(ValueError, match="tile_overlap_factor"): m.decode(torch.randn(1, 4, 40, 40), tiled=True)


BAD_CONFIGS = [
    (dict(act_fn="gelu"), "act_fn='gelu'"),
    (dict(up_block_types=("UpDecoderBlock2D",)), "must match"),
    (dict(down_block_types=("DownBlock2D", "DownEncoderBlock2D")), "only 'DownEncoderBlock2D'"),
    (dict(block_out_channels=(32, 48)), "norm_num_groups=32 must divide"),
    (dict(block_out_channels=()), "non-empty"),
    (dict(block_out_channels=(32, 0), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
     "positive ints"),
    (dict(latent_channels=0), "latent_channels=0"),
    (dict(layers_per_block=1.5), "layers_per_block=1.5"),
]


@pytest.mark.parametrize("overrides,msg", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs(overrides, msg):
    with pytest.raises(ValueError) as e: AutoencoderKL.from_config(tiny_vae_config(**overrides))
    assert msg in str(e.value), str(e.value)


def test_unknown_config_key_warns():
    with pytest.warns(UserWarning, match="not_a_key"): AutoencoderKL.from_config(tiny_vae_config(not_a_key=1))


# ---- parity sweep over configs
SWEEP = {
    "default": {},
    "3 blocks, 2 layers, 8 groups": dict(block_out_channels=(16, 32, 48), down_block_types=("DownEncoderBlock2D",) * 3,
                                        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, norm_num_groups=8),
    "no quant convs, 3 latents": dict(latent_channels=3, use_quant_conv=False, use_post_quant_conv=False),
    "quant only, no mid attention": dict(use_post_quant_conv=False, mid_block_add_attention=False),
    "1 block, odd widths": dict(block_out_channels=(12,), down_block_types=("DownEncoderBlock2D",),
                                up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, latent_channels=5),
    "1 channel in, 2 out": dict(in_channels=1, out_channels=2),
}


@pytest.mark.parametrize("name", list(SWEEP))
def test_parity_sweep(name):
    ours, ref = pair(**SWEEP[name])
    c = ours.config
    x = torch.randn(2, c.in_channels, 16, 24)
    z = torch.randn(2, c.latent_channels, 16 // c.downscale_factor, 24 // c.downscale_factor)
    with torch.no_grad():
        p, q = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        assert max_abs_err((p.mean, p.logvar, p.std), (q.mean, q.logvar, q.std)) <= ATOL
        assert max_abs_err(p.sample(torch.Generator().manual_seed(3)), q.sample(torch.Generator().manual_seed(3))) <= ATOL
        assert max_abs_err(ours.decode(z).sample, ref.decode(z).sample) <= ATOL
        assert max_abs_err(ours(x).sample, ref(x).sample) <= ATOL


def test_state_dict_keys_match_diffusers():
    ours, ref = pair(use_quant_conv=False)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.quant_conv is None and ours.post_quant_conv is not None


# ---- tiling and slicing
@pytest.mark.parametrize("latent_hw,tile,overlap", [((16, 28), None, None), ((12, 10), 16, 0.5), ((11, 7), 8, 0.25), ((8, 8), 16, 0.0)])
def test_tiled_decode_matches_diffusers(latent_hw, tile, overlap):
    ours, ref = pair()
    if tile is not None:
        ours.enable_tiling(tile_sample_min_size=tile, tile_overlap_factor=overlap)
        ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = tile, tile // 2, overlap
    z = torch.randn(1, 4, *latent_hw)
    with torch.no_grad():
        assert max_abs_err(ours.tiled_decode(z, progress=False).sample, ref.tiled_decode(z).sample) <= ATOL
        ref.enable_tiling()
        assert max_abs_err(ours.decode(z, tiled=True, progress=False).sample, ref.decode(z).sample) <= ATOL


def test_tiled_encode_matches_diffusers():
    ours, ref = pair()
    ref.enable_tiling()
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        assert max_abs_err(ours.encode(x, tiled=True, progress=False).latent_dist.mean, ref.encode(x).latent_dist.mean) <= ATOL


def test_small_input_not_tiled(tiny):
    "Inputs within one tile take the plain path even with tiling on."
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(tiny.decode(z, tiled=True, progress=False).sample, tiny.decode(z, tiled=False).sample)


def test_enable_flags_and_slicing(tiny):
    z, x = torch.randn(3, 4, 8, 8), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        full, enc = tiny.decode(z).sample, tiny.encode(x).latent_dist.mean
        tiny.enable_slicing()
        try:
            assert max_abs_err(tiny.decode(z).sample, full) <= 1e-5
            assert max_abs_err(tiny.encode(x).latent_dist.mean, enc) <= 1e-5
        finally: tiny.disable_slicing()
    tiny.enable_tiling(tile_sample_min_size=16)
    assert tiny.use_tiling and (tiny.tile_sample_min_size, tiny.tile_latent_min_size) == (16, 8)
    tiny.disable_tiling(); assert not tiny.use_tiling


def test_blend_in_place_like_diffusers():
    from diffusers import AutoencoderKL as Ref
    a, b = torch.randn(1, 2, 7, 9), torch.randn(1, 2, 5, 9)
    for e in (0, 1, 4, 9):
        assert torch.equal(blend_v(a, b.clone(), e), Ref.blend_v(None, a, b.clone(), e))
        assert torch.equal(blend_h(a.mT, b.mT.clone(), e), Ref.blend_h(None, a.mT, b.mT.clone(), e))


# ---- pieces
def test_distribution_deterministic_and_scaling(tiny):
    d = DiagonalGaussianDistribution(torch.randn(1, 8, 2, 2), deterministic=True)
    assert torch.equal(d.sample(0), d.mean) and d.kl().item() == 0.0
    z = torch.randn(1, 4, 2, 2)
    assert torch.allclose(tiny.unscale_latents(tiny.scale_latents(z)), z, atol=1e-6)
    assert not tiny.needs_upcast and tiny.half().needs_upcast
    tiny.float()


def test_from_pretrained_reports_key_mismatch(tmp_path):
    ref = tiny_vae()
    d = save_reference(ref, tmp_path / "vae")
    cfg = json.loads((d / "config.json").read_text()); cfg["use_quant_conv"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected"): AutoencoderKL.from_pretrained(d)


def test_meta_full_size_parameter_count():
    cfg = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"): m = AutoencoderKL.from_config(cfg)
    assert sum(p.numel() for p in m.parameters()) == 83_653_863
    assert (m.tile_sample_min_size, m.tile_latent_min_size) == (768, 96)


def test_progress_bar_over_tiles(capsys):
    m = AutoencoderKL.from_config(tiny_vae_config()).eval()
    z = torch.randn(1, 4, 20, 20)
    with torch.no_grad():
        m.decode(z, tiled=True, progress=True)
        assert "VAE decode tiles" in capsys.readouterr().err
        m.decode(z, tiled=True, progress=False)
        assert capsys.readouterr().err == ""


def test_old_attention_names_load(tmp_path):
    "Checkpoints saved before diffusers 0.14 (`query`/`key`/`value`/`proj_attn`) load, strictly, with the same numbers."
    from safetensors.torch import load_file, save_file
    from diffuse_nb.vae import deprecated_attention_renames
    ref = tiny_vae(layers_per_block=2)
    d = save_reference(ref, tmp_path / "vae")
    f = d / "diffusion_pytorch_model.safetensors"
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn."): v
           for k, v in load_file(f).items()}
    assert len(deprecated_attention_renames(old)) == 16               # 2 mid blocks × 4 linears × (weight, bias)
    save_file(old, f)
    ours = AutoencoderKL.from_pretrained(d)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad(): assert max_abs_err(ours.decode(z).sample, ref.decode(z).sample) <= ATOL
    old["decoder.mid_block.attentions.0.bogus.weight"] = torch.zeros(1)   # anything else is still an error
    save_file(old, f)
    with pytest.raises(CheckpointError, match="unexpected"): AutoencoderKL.from_pretrained(d)


def test_dict_positional_config_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"AutoencoderKL.from_config\(config\) or AutoencoderKL\(\*\*config\)"):
        AutoencoderKL(tiny_vae_config())
    assert dict(AutoencoderKL(**tiny_vae_config()).config) == dict(AutoencoderKL.from_config(tiny_vae_config()).config)


def test_outputs_index_like_diffusers(tiny):
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        enc, dec = tiny.encode(x), tiny.decode(torch.randn(1, 4, 8, 8))
    assert enc[0] is enc.latent_dist and enc["latent_dist"] is enc.latent_dist and dec.to_tuple()[0] is dec.sample
