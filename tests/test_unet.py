"Tests for diffuse_nb.unet beyond the notebook: config sweeps against diffusers, bad input, packing, import hygiene."
import subprocess, sys, warnings

import pytest
import torch

from diffuse_nb.unet import UNet2DConditionModel, UNet2DConditionConfig, SD21_UNET_CONFIG, SDXL_UNET_CONFIG
from diffuse_nb.layers import Attention, attention, timestep_embedding
from diffuse_nb.testing import check_parity, tiny_unet, tiny_unet_config, save_reference, randomize_

warnings.filterwarnings("ignore", category=FutureWarning)


def _inputs(cfg, shape=(2, 4, 16, 16), tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    cross = cfg["cross_attention_dim"]; cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    kw = dict(sample=torch.randn(shape, generator=g), timestep=torch.tensor([999.0, 3.5, 400.0, 1.0])[:B],
              encoder_hidden_states=torch.randn(B, tokens, cross, generator=g))
    if cfg.get("addition_embed_type") == "text_time":
        text = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = dict(text_embeds=torch.randn(B, text, generator=g),
                                       time_ids=torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).repeat(B, 1))
    return kw


def _parity(kind, shape=(2, 4, 16, 16), atol=1e-4, extra=None, **overrides):
    ref = tiny_unet(kind, **overrides)
    ours = UNet2DConditionModel.from_config(dict(ref.config))
    ours.load_state_dict(ref.state_dict(), strict=True); ours.eval()
    kw = _inputs(dict(ref.config), shape); kw.update(extra or {})
    with torch.no_grad(): return check_parity(ours(**kw).sample, ref(**kw).sample, atol, f"{kind} {overrides}")


SD2_LIKE = dict(block_out_channels=(32, 64, 64), layers_per_block=2, attention_head_dim=(2, 4, 4), cross_attention_dim=48,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                use_linear_projection=True, upcast_attention=True)

SWEEP = [
    ("sd", {}),
    ("sd", dict(use_linear_projection=True)),
    ("sd", SD2_LIKE),
    ("sdxl", {}),
    ("sdxl", dict(use_linear_projection=False)),
    ("sd", dict(block_out_channels=(24, 48), norm_num_groups=8, attention_head_dim=(3, 6), cross_attention_dim=20)),
    ("sd", dict(resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.414, center_input_sample=True)),
    ("sd", dict(flip_sin_to_cos=False, freq_shift=1, layers_per_block=(1, 2), transformer_layers_per_block=(1, 3))),
    ("sd", dict(conv_in_kernel=1, conv_out_kernel=1, time_embedding_dim=48, norm_eps=1e-6, downsample_padding=0)),
    ("sd", dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=(32, 32))),
    ("sdxl", dict(addition_time_embed_dim=4, projection_class_embeddings_input_dim=40)),
]


@pytest.mark.parametrize("kind,overrides", SWEEP)
def test_parity_sweep(kind, overrides):
    _parity(kind, **overrides)


@pytest.mark.parametrize("shape", [(1, 4, 24, 40), (2, 4, 8, 48), (3, 4, 16, 16)])
def test_parity_shapes(shape):
    _parity("sd", shape)
    _parity("sdxl", shape)


def test_from_pretrained_and_masks():
    ref = tiny_unet("sd")
    ours = UNet2DConditionModel.from_pretrained(save_reference(ref))
    mask = torch.ones(2, 5); mask[0, 2:] = 0
    kw = _inputs(dict(ref.config))
    with torch.no_grad():
        check_parity(ours(**kw, encoder_attention_mask=mask).sample, ref(**kw, encoder_attention_mask=mask).sample, 1e-4,
                     "mask")
        out, tup = ours(**kw), ours(**kw, return_dict=False)
    assert out.sample.shape == kw["sample"].shape and isinstance(tup, tuple) and torch.equal(tup[0], out[0])


def test_timestep_forms():
    m = UNet2DConditionModel.from_config(tiny_unet_config("sd")).eval()
    x, ctx = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    with torch.no_grad():
        a = m(x, 10, ctx).sample
        for t in (10.0, torch.tensor(10), torch.tensor([10]), torch.tensor([10, 10]), torch.tensor([10.0, 10.0])):
            check_parity(m(x, t, ctx).sample, a, 0, f"timestep {t!r}")


def test_num_attention_heads_spelling():
    a = UNet2DConditionModel.from_config(tiny_unet_config("sdxl", num_attention_heads=(2, 4), attention_head_dim=None))
    b = UNet2DConditionModel.from_config(tiny_unet_config("sdxl"))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert a.down_blocks[1].attentions[0].transformer_blocks[0].attn1.heads == 4


def test_full_size_param_counts():
    n = lambda m: sum(p.numel() for p in m.parameters())
    with torch.device("meta"):
        assert n(UNet2DConditionModel.from_config(SD21_UNET_CONFIG)) == 865_910_724
        assert n(UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)) == 2_567_463_684


BAD_INPUTS = [
    (lambda m, x, c: m(torch.randn(1, 4, 31, 32), 1, c), "multiples of 2"),
    (lambda m, x, c: m(torch.randn(1, 4, 32, 33), 1, c), "multiples of 2"),
    (lambda m, x, c: m(torch.randn(1, 3, 32, 32), 1, c), "in_channels=4"),
    (lambda m, x, c: m(torch.randn(4, 32, 32), 1, c), "(batch, channels, height, width)"),
    (lambda m, x, c: m(x, 1, torch.randn(1, 7, 16)), "cross_attention_dim"),
    (lambda m, x, c: m(x, 1, torch.randn(7, 32)), "(batch, tokens, width)"),
    (lambda m, x, c: m(x, 1, torch.randn(2, 7, 32)), "batch 2"),
    (lambda m, x, c: m(x, torch.tensor([1, 2]), c), "one per sample"),
    (lambda m, x, c: m(x, "1", c), "timestep must be"),
    (lambda m, x, c: m(x, 1, c, encoder_attention_mask=torch.ones(1, 6)), "encoder_attention_mask has 6 tokens"),
    (lambda m, x, c: m(x.double(), 1, c), "sample.to(torch.float32)"),
    (lambda m, x, c: m(x, 1, c.double()), "encoder_hidden_states.to(torch.float32)"),
    (lambda m, x, c: m(x, 1, c, added_cond_kwargs=dict(text_embeds=torch.zeros(1, 8), time_ids=torch.zeros(1, 6))),
     "drop added_cond_kwargs"),
    (lambda m, x, c: m(x, 1, c, class_labels=torch.zeros(1)), "['class_labels'] are not supported"),
    (lambda m, x, c: m(x, 1, c, down_block_additional_residuals=(x,)), "down_block_additional_residuals"),
]


@pytest.mark.parametrize("call,msg", BAD_INPUTS)
def test_bad_input(call, msg):
    m = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    with pytest.raises((ValueError, TypeError), match=None) as e: call(m, torch.randn(1, 4, 32, 32), torch.randn(1, 7, 32))
    assert msg in str(e.value), str(e.value)


def test_bad_input_sdxl():
    m = UNet2DConditionModel.from_config(tiny_unet_config("sdxl"))
    x, c = torch.randn(1, 4, 32, 32), torch.randn(1, 7, 64)
    for kw, msg in [(None, "missing ['text_embeds', 'time_ids']"), (dict(text_embeds=torch.randn(1, 32)), "missing ['time_ids']"),
                    (dict(time_ids=torch.zeros(1, 6)), "missing ['text_embeds']"),
                    (dict(text_embeds=torch.randn(1, 31), time_ids=torch.zeros(1, 6)), "projection_class_embeddings_input_dim"),
                    (dict(text_embeds=torch.randn(1, 32), time_ids=torch.zeros(1, 5)), "projection_class_embeddings_input_dim")]:
        with pytest.raises(ValueError) as e: m(x, 1, c, added_cond_kwargs=kw)
        assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("key,value", [("only_cross_attention", True), ("dual_cross_attention", True),
                                       ("class_embed_type", "timestep"), ("addition_embed_type", "text"),
                                       ("time_embedding_type", "fourier"), ("encoder_hid_dim", 16),
                                       ("mid_block_type", "UNetMidBlock2D"), ("attention_type", "gated"),
                                       ("down_block_types", ("DownBlock2D", "SimpleCrossAttnDownBlock2D")),
                                       ("norm_num_groups", None), ("attention_head_dim", (2, 4, 8)), ("block_out_channels", (32, 60)),
                                       ("block_out_channels", ())])
def test_unsupported_config(key, value):
    with pytest.raises(ValueError) as e: UNet2DConditionModel.from_config(tiny_unet_config("sd", **{key: value}))
    assert key.split("_types")[0].split("_type")[0] in str(e.value) or "block" in str(e.value), str(e.value)


def test_unknown_config_key_warns():
    with pytest.warns(UserWarning, match="not_a_key"): UNet2DConditionModel.from_config(tiny_unet_config("sd", not_a_key=1))


def test_attention_masks_and_shapes():
    q, k, v = torch.randn(2, 6, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    bias = torch.zeros(2, 5); bias[:, 3:] = float("-inf")
    keep = bias == 0
    a = attention(q, k, v, 4, bias)
    check_parity(attention(q, k, v, 4, keep), a, 1e-6, "bool mask")
    check_parity(attention(q, k[:, :3], v[:, :3], 4), a, 1e-6, "mask = dropping keys")
    attn = Attention(16, heads=2, dim_head=8, norm_num_groups=4, residual_connection=True)
    x = torch.randn(2, 16, 3, 5)
    assert attn(x).shape == x.shape


def test_timestep_embedding_odd_dim():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0.0, 17.0, 999.0])
    check_parity(timestep_embedding(t, 33, True, 0), get_timestep_embedding(t, 33, True, 0), 1e-6, "odd dim")


def test_runtime_does_not_import_diffusers():
    code = "import sys, diffuse_nb.unet; bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gradients_match_diffusers():
    "Training works: the in-place tricks are off under autograd, and parameter gradients equal diffusers'."
    ref = tiny_unet("sdxl")
    ours = UNet2DConditionModel.from_config(dict(ref.config)); ours.load_state_dict(ref.state_dict())
    kw = _inputs(dict(ref.config), (2, 4, 8, 8))
    ours(**kw).sample.square().mean().backward(); ref(**kw).sample.square().mean().backward()
    g_ours = {n: p.grad for n, p in ours.named_parameters()}
    g_ref = {n: p.grad for n, p in ref.named_parameters()}
    assert g_ours.keys() == g_ref.keys()
    check_parity([g_ours[n] for n in g_ref], [g_ref[n] for n in g_ref], 1e-5, "parameter gradients")


def test_empty_cross_attention_kwargs_and_autocast_are_fine():
    m = UNet2DConditionModel.from_config(tiny_unet_config("sd")).eval()
    x, c = torch.randn(1, 4, 16, 16), torch.randn(1, 5, 32)
    with torch.no_grad():
        a = m(x, 3, c, cross_attention_kwargs={}).sample
        with torch.autocast("cpu", dtype=torch.bfloat16): b = m(x.bfloat16(), 3, c).sample   # mixed dtypes allowed
    assert a.shape == b.shape


def test_config_mapping_and_kwargs_construction():
    cfg = tiny_unet_config("sdxl")
    a, b = UNet2DConditionModel(**cfg), UNet2DConditionModel.from_config(cfg)
    assert dict(a.config) == dict(b.config) and a.config["addition_embed_type"] == "text_time"
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(TypeError, match=r"UNet2DConditionModel.from_config\(config\) or UNet2DConditionModel\(\*\*config\)"):
        UNet2DConditionModel(cfg)
