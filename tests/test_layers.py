"Tests for diffuse_nb.layers: attention backends against each other and the references, norms, feed-forwards, blocks."
import os, subprocess, sys

import pytest
import torch
import torch.nn.functional as F

from diffuse_nb.layers import (ATTENTION_BACKENDS, ACTIVATIONS, Attention, Downsample2D, FeedForward, GatedMLP, GEGLU,
                               GELU, ResnetBlock2D, RMSNorm, TimestepEmbedding, Timesteps, Upsample2D, attention,
                               attention_backend, get_attention_backend, math_attention, rms_norm,
                               scaled_dot_product_attention, set_attention_backend, timestep_embedding)
from diffuse_nb.testing import check_parity, randomize_


def qkv(B=2, H=4, Hkv=None, Lq=6, Lk=6, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return mk(B, H, Lq, D), mk(B, Hkv, Lk, D), mk(B, Hkv, Lk, D)


def masks(B, H, Lq, Lk, seed=1):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, 1, Lq, Lk, generator=g) > 0.3
    keep[..., 0] = True                                                  # every row sees something
    pad = torch.ones(B, Lk, dtype=torch.bool); pad[0, -2:] = False; pad[-1, :2] = False
    return {"none": None, "bool (B,1,Lq,Lk)": keep, "additive": torch.zeros(B, 1, Lq, Lk).masked_fill(~keep, -1e4),
            "bool (B,1,1,Lk) padding": pad[:, None, None, :], "bool per head": torch.rand(B, H, Lq, Lk, generator=g) > 0.2}


@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("Lq,Lk", [(6, 6), (3, 9), (9, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_backends_agree(H, Hkv, Lq, Lk, causal):
    q, k, v = qkv(H=H, Hkv=Hkv, Lq=Lq, Lk=Lk)
    for name, m in masks(2, H, Lq, Lk).items():
        a = scaled_dot_product_attention(q, k, v, m, causal, backend="sdpa")
        b = scaled_dot_product_attention(q, k, v, m, causal, backend="math")
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        check_parity(a, b, 1e-5, f"H={H} Hkv={Hkv} {Lq}x{Lk} causal={causal} mask={name}")


def test_math_is_the_formula():
    q, k, v = qkv(B=1, H=1, Lq=5, Lk=7)
    m = torch.rand(1, 1, 5, 7) > 0.4; m[..., 0] = True
    s = (q[0, 0] @ k[0, 0].T) / 8 ** 0.5
    ref = s.masked_fill(~m[0, 0], float("-inf")).softmax(-1) @ v[0, 0]
    check_parity(math_attention(q, k, v, m)[0, 0], ref, 1e-6, "formula")
    check_parity(math_attention(q, k, v, scale=0.3)[0, 0], (q[0, 0] @ k[0, 0].T * 0.3).softmax(-1) @ v[0, 0], 1e-6)


def test_gqa_equals_repeated_heads():
    q, k, v = qkv(H=8, Hkv=2)
    rep = lambda t: t.repeat_interleave(4, 1)
    for backend in ATTENTION_BACKENDS:
        check_parity(scaled_dot_product_attention(q, k, v, backend=backend),
                     scaled_dot_product_attention(q, rep(k), rep(v), backend=backend), 1e-6, backend)


def test_fully_masked_rows_are_zero():
    q, k, v = qkv()
    m = torch.ones(2, 1, 6, 6, dtype=torch.bool); m[0, :, 2] = False       # query 2 of sample 0 sees nothing
    for backend in ATTENTION_BACKENDS:
        out = scaled_dot_product_attention(q, k, v, m, backend=backend)
        assert torch.isfinite(out).all() and out[0, :, 2].abs().max() == 0


def test_half_precision_backends_close():
    q, k, v = qkv(dtype=torch.bfloat16)
    a = scaled_dot_product_attention(q, k, v, is_causal=True, backend="sdpa")
    b = scaled_dot_product_attention(q, k, v, is_causal=True, backend="math")
    assert a.dtype == b.dtype == torch.bfloat16
    check_parity(a, b, 3e-2, "bf16")


def test_attention_on_projections_and_masks():
    B, Lq, Lk = 2, 5, 7
    q, k, v = torch.randn(B, Lq, 32), torch.randn(B, Lk, 16), torch.randn(B, Lk, 16)
    out = attention(q, k, v, num_heads=4, num_kv_heads=2)
    assert out.shape == (B, Lq, 32)
    keep = torch.ones(B, Lk, dtype=torch.bool); keep[:, 5:] = False
    a = attention(q, k, v, 4, mask=keep, num_kv_heads=2)
    check_parity(a, attention(q, k[:, :5], v[:, :5], 4, num_kv_heads=2), 1e-5, "(B, Lk) mask")
    check_parity(attention(q, k, v, 4, mask=keep[:, None].expand(B, Lq, Lk), num_kv_heads=2), a, 1e-6, "(B, Lq, Lk)")
    check_parity(attention(q, k, v, 4, mask=keep[:, None, None], num_kv_heads=2), a, 1e-6, "(B, 1, 1, Lk)")
    bias = torch.zeros(B, 1, Lk); bias[:, :, 5:] = -1e9                   # the UNet's additive (B, 1, Lk) form
    check_parity(attention(q, k, v, 4, mask=bias, num_kv_heads=2), a, 1e-5, "additive (B, 1, Lk)")


def test_attention_causal_with_padding_matches_explicit_mask():
    x = torch.randn(2, 6, 16)
    pad = torch.ones(2, 6, dtype=torch.bool); pad[0, 4:] = False
    explicit = torch.ones(6, 6, dtype=torch.bool).tril() & pad[:, None, None, :]
    check_parity(attention(x, x, x, 4, mask=pad, is_causal=True), attention(x, x, x, 4, mask=explicit), 1e-6)


def test_backend_switch_and_env(monkeypatch):
    assert get_attention_backend() == "sdpa"
    with attention_backend("math"):
        assert get_attention_backend() == "math"
        with pytest.raises(ValueError, match="name='flash'"): set_attention_backend("flash")
    assert get_attention_backend() == "sdpa"
    monkeypatch.setenv("DIFFUSE_NB_ATTENTION", "math")
    set_attention_backend(None); assert get_attention_backend() == "math"
    monkeypatch.setenv("DIFFUSE_NB_ATTENTION", "nope")
    with pytest.raises(ValueError, match="DIFFUSE_NB_ATTENTION='nope'.*allowed"): set_attention_backend(None)
    monkeypatch.delenv("DIFFUSE_NB_ATTENTION"); set_attention_backend(None)
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="backend='xformers'"): scaled_dot_product_attention(*qkv(), backend="xformers")


def test_env_read_on_first_use():
    code = ("import diffuse_nb.layers as L, torch; q = torch.randn(1, 1, 2, 4); L.attention(q[0], q[0], q[0], 1);"
            "assert L.get_attention_backend() == 'math'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "DIFFUSE_NB_ATTENTION": "math"})


@pytest.mark.parametrize("shapes,msg", [(((2, 4, 6, 8), (2, 3, 6, 8), (2, 3, 6, 8)), "multiple of the key/value heads"),
                                        (((2, 6, 8), (2, 6, 8), (2, 6, 8)), "(batch, heads, tokens, head_dim)"),
                                        (((2, 4, 6, 8), (2, 4, 6, 4), (2, 4, 6, 8)), "head_dim"),
                                        (((2, 4, 6, 8), (2, 4, 6, 8), (2, 4, 5, 8)), "must agree")])
def test_bad_attention_shapes(shapes, msg):
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError) as e: scaled_dot_product_attention(q, k, v)
    assert msg in str(e.value), str(e.value)


def test_attention_module_parity_with_math_backend():
    from diffusers.models.attention_processor import Attention as Ref
    ref = randomize_(Ref(24, 16, heads=3, dim_head=8)).eval()
    ours = Attention(24, 16, heads=3, dim_head=8); ours.load_state_dict(ref.state_dict(), strict=True)
    x, ctx = torch.randn(2, 9, 24), torch.randn(2, 4, 16)
    with torch.no_grad():
        for backend in ATTENTION_BACKENDS:
            with attention_backend(backend): check_parity(ours(x, ctx), ref(x, ctx), 1e-5, backend)


# ---- norms
def test_rms_norm_dtypes_and_references():
    from diffusers.models.normalization import RMSNorm as DRMS
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    x = torch.randn(3, 7, 32) * 4 + 2
    w = torch.randn(32)
    assert rms_norm(x.bfloat16(), w.bfloat16()).dtype == torch.bfloat16
    ref32 = rms_norm(x, w)
    check_parity(rms_norm(x.bfloat16(), w), ref32, 0.1, "bf16 input, float32 statistics")
    d = DRMS(32, eps=1e-6); d.weight.data.copy_(w)
    assert torch.equal(rms_norm(x, w), d(x).detach())
    g = Gemma3RMSNorm(32); g.weight.data.copy_(w)
    ours = RMSNorm(32, unit_offset=True); ours.load_state_dict(g.state_dict())
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(ours(x.to(dt)), g(x.to(dt)).detach()), dt
    assert RMSNorm(8, elementwise_affine=False).weight is None and list(RMSNorm(8).state_dict()) == ["weight"]
    assert torch.equal(RMSNorm(8, unit_offset=True).weight, torch.zeros(8))


# ---- activations, feed-forwards, embeddings
def test_activations_match_transformers():
    from transformers.activations import ACT2FN
    x = torch.linspace(-6, 6, 1001)
    for name in ("gelu", "gelu_pytorch_tanh", "quick_gelu", "silu"): assert torch.equal(ACTIVATIONS[name](x), ACT2FN[name](x))
    assert torch.equal(ACTIVATIONS["gelu-approximate"](x), ACTIVATIONS["gelu_tanh"](x))


@pytest.mark.parametrize("act", ["geglu", "gelu", "gelu-approximate"])
@pytest.mark.parametrize("kw", [{}, dict(dim_out=7, inner_dim=20), dict(mult=2, bias=False), dict(final_dropout=True)])
def test_feedforward_parity(act, kw):
    from diffusers.models.attention import FeedForward as Ref
    ref = randomize_(Ref(12, activation_fn=act, **kw)).eval()
    ours = FeedForward(12, activation_fn=act, **kw); ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 5, 12)
    with torch.no_grad(): check_parity(ours(x), ref(x), 1e-6, f"{act} {kw}")


def test_gated_mlp_parity():
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP
    ref = randomize_(Gemma3MLP(Gemma3TextConfig(hidden_size=12, intermediate_size=30, num_attention_heads=2,
                                                           num_key_value_heads=1, head_dim=6))).eval()
    ours = GatedMLP(12, 30); ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 5, 12)
    with torch.no_grad(): check_parity(ours(x), ref(x), 1e-6, "GatedMLP")
    assert list(GatedMLP(4, 8, act="silu", bias=True).state_dict()) == [
        "gate_proj.weight", "gate_proj.bias", "up_proj.weight", "up_proj.bias", "down_proj.weight", "down_proj.bias"]


@pytest.mark.parametrize("dim,flip,shift,scale", [(320, True, 0, 1), (256, False, 1, 1), (7, True, 1, 1000), (2, False, 0, 1)])
def test_timestep_embedding_bit_identical(dim, flip, shift, scale):
    from diffusers.models.embeddings import get_timestep_embedding, Timesteps as Ref
    t = torch.tensor([0.0, 0.5, 17.0, 999.0])
    assert torch.equal(timestep_embedding(t, dim, flip, shift, scale), get_timestep_embedding(t, dim, flip, shift, scale))
    assert torch.equal(Timesteps(dim, flip, shift, scale)(t), Ref(dim, flip, shift, scale)(t))


def test_timestep_embedding_module_and_errors():
    from diffusers.models.embeddings import TimestepEmbedding as Ref
    ref = randomize_(Ref(16, 24, out_dim=8)).eval()
    ours = TimestepEmbedding(16, 24, out_dim=8); ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 16)
    with torch.no_grad(): check_parity(ours(x), ref(x), 1e-6)
    with pytest.raises(ValueError, match="1-D"): timestep_embedding(torch.zeros(2, 2), 8)
    with pytest.raises(ValueError, match="act_fn='tanh'"): TimestepEmbedding(4, 4, act_fn="tanh")


# ---- convolutional blocks
@pytest.mark.parametrize("kw", [dict(in_channels=16, out_channels=32, temb_channels=8, groups=8),
                                dict(in_channels=16, temb_channels=None, groups=4, eps=1e-5),
                                dict(in_channels=16, out_channels=16, temb_channels=8, groups=4, time_embedding_norm="scale_shift",
                                     output_scale_factor=1.5),
                                dict(in_channels=16, out_channels=24, temb_channels=8, groups=8, groups_out=4)])
def test_resnet_parity(kw):
    from diffusers.models.resnet import ResnetBlock2D as Ref
    ref = randomize_(Ref(**kw)).eval()
    ours = ResnetBlock2D(**kw); ours.load_state_dict(ref.state_dict(), strict=True)
    x, temb = torch.randn(2, 16, 6, 5), torch.randn(2, 8) if kw.get("temb_channels") else None
    with torch.no_grad(): check_parity(ours(x, temb), ref(x, temb), 1e-5, str(kw))


def test_resnet_scale_shift_needs_temb():
    with pytest.raises(ValueError, match="temb is required"):
        ResnetBlock2D(8, temb_channels=4, groups=4, time_embedding_norm="scale_shift")(torch.randn(1, 8, 2, 2))


def test_sampling_blocks_parity():
    from diffusers.models.downsampling import Downsample2D as RD
    from diffusers.models.upsampling import Upsample2D as RU
    x = torch.randn(2, 8, 7, 10)
    for ours, ref, kw in [(Downsample2D(8, padding=0), RD(8, use_conv=True, padding=0, name="op"), {}),
                          (Downsample2D(8, out_channels=4), RD(8, use_conv=True, out_channels=4, name="op"), {}),
                          (Upsample2D(8, out_channels=4), RU(8, use_conv=True, out_channels=4), {}),
                          (Upsample2D(8), RU(8, use_conv=True), dict(output_size=(15, 21))),
                          (Upsample2D(8, use_conv=False), RU(8), {})]:
        randomize_(ref).eval(); ours.load_state_dict(ref.state_dict(), strict=True)
        with torch.no_grad(): check_parity(ours(x, **kw), ref(x, **kw), 1e-5, type(ours).__name__)


def test_gradients_flow():
    "Plain layers have no in-place tricks: autograd works through every block."
    blocks = [(ResnetBlock2D(8, 16, temb_channels=4, groups=4), (torch.randn(1, 8, 4, 4), torch.randn(1, 4))),
              (Attention(8, heads=2, dim_head=4, norm_num_groups=4, residual_connection=True), (torch.randn(1, 8, 3, 3),)),
              (FeedForward(8), (torch.randn(1, 3, 8),)), (GEGLU(8, 4), (torch.randn(1, 3, 8),)),
              (GELU(8, 4), (torch.randn(1, 3, 8),)), (Upsample2D(8), (torch.randn(1, 8, 3, 3),))]
    for m, args in blocks:
        m(*args).square().sum().backward()
        assert all(p.grad is not None for p in m.parameters()), type(m).__name__


def test_package_imports_without_references():
    code = "import sys, diffuse_nb.layers; bad = [m for m in ('diffusers', 'transformers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
