"RoPE tables and rotations of `diffuse_nb.rope` against diffusers' LTX-2 classes, plus the bad-input table."
import math

import pytest
import torch

from diffuse_nb.rope import (ROPE_LAYOUTS, apply_rotary_emb, audio_coords, rope_1d_cos_sin, rope_cos_sin,
                             rope_frequencies, video_coords)

ltx2 = pytest.importorskip("diffusers.models.transformers.transformer_ltx2")
connectors = pytest.importorskip("diffusers.pipelines.ltx2.connectors")

def max_err(a, b): return max((x - y).abs().max().item() for x, y in zip(a, b))

# (dim, heads): dims that divide evenly, that leave padding channels, and LTX-2's full video/audio widths
DIMS = [(64, 4), (100, 2), (4096, 32), (2048, 32)]

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("dim,heads", DIMS)
@pytest.mark.parametrize("F,H,W,fps,patch", [(3, 4, 5, 24.0, 1), (5, 2, 3, 25.0, 1), (1, 1, 1, 50.0, 1),
                                             (4, 4, 6, 30.0, 2), (7, 3, 2, 8.0, 1)])
def test_video_tables(layout, double, dim, heads, F, H, W, fps, patch):
    ref = ltx2.LTX2AudioVideoRotaryPosEmbed(dim, patch_size=patch, patch_size_t=patch, modality="video",
                                            rope_type=layout, num_attention_heads=heads, double_precision=double)
    rc = ref.prepare_video_coords(2, F, H, W, "cpu", fps=fps)
    oc = video_coords(2, F, H, W, patch_size=patch, patch_size_t=patch, fps=fps)
    assert (rc - oc).abs().max().item() <= 1e-6
    ours = rope_cos_sin(oc, dim, (20, 2048, 2048), layout=layout, num_heads=heads, double_precision=double)
    assert max_err(ref(rc), ours) <= 1e-6

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("dim,heads", DIMS)
@pytest.mark.parametrize("n,shift,sr,hop", [(7, 0, 16000, 160), (13, 3, 16000, 160), (126, 0, 24000, 240)])
def test_audio_tables(layout, double, dim, heads, n, shift, sr, hop):
    ref = ltx2.LTX2AudioVideoRotaryPosEmbed(dim, modality="audio", scale_factors=[4], rope_type=layout,
                                            num_attention_heads=heads, double_precision=double,
                                            sampling_rate=sr, hop_length=hop)
    rc = ref.prepare_audio_coords(2, n, "cpu", shift=shift)
    oc = audio_coords(2, n, shift=shift, sampling_rate=sr, hop_length=hop)
    assert (rc - oc).abs().max().item() <= 1e-6
    ours = rope_cos_sin(oc, dim, (20,), layout=layout, num_heads=heads, double_precision=double)
    assert max_err(ref(rc), ours) <= 1e-6

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
def test_cross_attention_time_only(layout):
    ref = ltx2.LTX2AudioVideoRotaryPosEmbed(64, modality="video", rope_type=layout, num_attention_heads=4)
    rc = ref.prepare_video_coords(1, 3, 2, 2, "cpu")
    assert max_err(ref(rc[:, :1]), rope_cos_sin(video_coords(1, 3, 2, 2)[:, :1], 64, 20, layout=layout,
                                                  num_heads=4)) <= 1e-6

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("dim,heads,L,base", [(32, 4, 17, 32), (3840, 30, 128, 4096), (4096, 32, 256, 4096)])
def test_connector_1d_tables(layout, double, dim, heads, L, base):
    ref = connectors.LTX2RotaryPosEmbed1d(dim, base_seq_len=base, double_precision=double, rope_type=layout,
                                          num_attention_heads=heads)
    ours = rope_1d_cos_sin(2, L, dim, base, double_precision=double, layout=layout, num_heads=heads)
    assert max_err(ref(2, L, "cpu"), ours) <= 1e-6

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_matches_diffusers(layout, dtype):
    fn = ltx2.apply_interleaved_rotary_emb if layout == "interleaved" else ltx2.apply_split_rotary_emb
    cos, sin = rope_1d_cos_sin(2, 24, 64, 32, layout=layout, num_heads=4)
    x = torch.randn(2, 24, 64).to(dtype)
    out = apply_rotary_emb(x, cos, sin, layout)
    assert out.dtype == dtype and torch.equal(fn(x, (cos, sin)), out)

def test_split_per_head_input_equals_packed():
    cos, sin = rope_1d_cos_sin(2, 5, 48, 16, layout="split", num_heads=3)
    x = torch.randn(2, 5, 48)
    per_head = apply_rotary_emb(x.unflatten(-1, (3, 16)).transpose(1, 2), cos, sin, "split")  # (B, H, L, D)
    assert torch.allclose(per_head.transpose(1, 2).flatten(2), apply_rotary_emb(x, cos, sin, "split"))

def test_rotation_keeps_norm_and_is_relative():
    cos, sin = rope_1d_cos_sin(1, 32, 16, base_seq_len=32)
    q = apply_rotary_emb(torch.randn(16).expand(1, 32, 16), cos, sin)[0]
    torch.testing.assert_close(q.norm(dim=-1), q[0].norm().expand(32))
    k = apply_rotary_emb(torch.randn(16).expand(1, 32, 16), cos, sin)[0]
    assert abs((q[5] @ k[2]) - (q[25] @ k[22])) < 5e-3                 # float32 angles up to θ·π/2
    assert abs((q[5] @ k[2]) - (q[5] @ k[3])) > 1e-3

def test_frequencies():
    f = rope_frequencies(8)
    assert f.dtype == torch.float32 and math.isclose(f[0].item(), math.pi / 2, rel_tol=1e-7)
    assert math.isclose(f[-1].item(), 10000 * math.pi / 2, rel_tol=1e-6) and bool((f.diff() > 0).all())

def test_video_coords_values():
    c = video_coords(1, 3, 1, 2, fps=24.0)                 # causal first frame: frames [0, 1), [1, 9), [9, 17)
    torch.testing.assert_close(c[0, 0, ::2], torch.tensor([[0, 1], [1, 9], [9, 17]]) / 24.0)
    torch.testing.assert_close(c[0, 2, :2], torch.tensor([[0.0, 32.0], [32.0, 64.0]]))
    a = audio_coords(1, 3)                                  # mel frames [0, 1), [1, 5), [5, 9) of 10 ms
    torch.testing.assert_close(a[0, 0], torch.tensor([[0, 1], [1, 5], [5, 9]]) * 0.01)

def test_tables_on_meta_and_dtype_of_coords():
    cos, sin = rope_cos_sin(video_coords(1, 2, 2, 2, device="meta"), 96, (20, 2048, 2048))
    assert cos.shape == (1, 8, 96) and cos.is_meta

C3 = video_coords(1, 2, 2, 2)
MAXP = (20, 2048, 2048)
BAD = [
    ("layout", lambda: rope_cos_sin(C3, 64, MAXP, layout="rotate_half"), ValueError, "layout='rotate_half'"),
    ("axes", lambda: rope_cos_sin(C3, 64, (20,)), ValueError, "max_positions=(20,)"),
    ("extent <= 0", lambda: rope_cos_sin(C3, 64, (0, 2048, 2048)), ValueError, "one positive extent"),
    ("coords rank", lambda: rope_cos_sin(C3[None], 64, MAXP), ValueError, "coords must have shape"),
    ("coords type", lambda: rope_cos_sin(C3.tolist(), 64, MAXP), TypeError, "coords must be a torch.Tensor"),
    ("dim", lambda: rope_cos_sin(C3, 0, MAXP), ValueError, "dim=0"),
    ("dim too small", lambda: rope_cos_sin(C3, 4, MAXP), ValueError, "too small for 3"),
    ("heads", lambda: rope_cos_sin(C3, 66, MAXP, layout="split", num_heads=4), ValueError, "num_heads=4"),
    ("frames", lambda: video_coords(1, 0, 2, 2), ValueError, "num_frames=0"),
    ("fps", lambda: video_coords(1, 2, 2, 2, fps=0), ValueError, "fps=0"),
    ("scale factors", lambda: video_coords(1, 2, 2, 2, scale_factors=(8, 32)), ValueError, "scale_factors=(8, 32)"),
    ("hop", lambda: audio_coords(1, 5, hop_length=16.5), ValueError, "hop_length=16.5"),
    ("seq_len", lambda: rope_1d_cos_sin(1, 0, 32), ValueError, "seq_len=0"),
    ("apply layout", lambda: apply_rotary_emb(torch.randn(1, 4, 8), *rope_1d_cos_sin(1, 4, 8), layout="complex"),
     ValueError, "allowed: ('interleaved', 'split')"),
    ("apply split width",
     lambda: apply_rotary_emb(torch.randn(1, 2, 4, 6), *rope_1d_cos_sin(1, 4, 16, layout="split", num_heads=2),
                              "split"), ValueError, "needs half as many"),
]

@pytest.mark.parametrize("name,call,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(name, call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value)
