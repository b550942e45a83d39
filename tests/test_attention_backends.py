"Tests for the attention backends of diffuse_nb.layers: parity with 'sdpa', fallbacks, missing packages, layouts."
import importlib.machinery, sys, types, warnings

import pytest
import torch
import torch.nn.functional as F

import diffuse_nb.layers as L
from diffuse_nb.layers import (ALL_ATTENTION_BACKENDS, ATTENTION_BACKENDS, AttentionBackendUnavailable, attention_backend,
                               get_attention_backend, scaled_dot_product_attention, set_attention_backend)
from diffuse_nb.testing import max_abs_err


def qkv(B=2, H=4, Hkv=None, Lq=6, Lk=6, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return mk(B, H, Lq, D), mk(B, Hkv or H, Lk, D), mk(B, Hkv or H, Lk, D)


def cases():
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(2, 1, 6, 9, generator=g) > 0.3; keep[..., 0] = True
    pad = torch.ones(2, 9, dtype=torch.bool); pad[0, -3:] = False; pad[1, :2] = False
    per_head = torch.rand(2, 8, 6, 9, generator=g) > 0.2
    return {"unmasked": {}, "bool mask": dict(attn_mask=keep), "padding (B,1,1,Lk)": dict(attn_mask=pad[:, None, None]),
            "additive": dict(attn_mask=torch.zeros(2, 1, 6, 9).masked_fill(~keep, -1e4)),
            "additive -inf": dict(attn_mask=torch.zeros(2, 1, 6, 9).masked_fill(~keep, float("-inf"))),
            "per-head bool": dict(attn_mask=per_head), "causal": dict(is_causal=True),
            "causal + padding": dict(attn_mask=pad[:, None, None], is_causal=True), "scale": dict(scale=0.2)}


RUNNABLE = [b for b in ATTENTION_BACKENDS if b != "sdpa"]


@pytest.mark.parametrize("backend", RUNNABLE)
@pytest.mark.parametrize("H,Hkv", [(8, 8), (8, 2)])
def test_backend_equals_sdpa(backend, H, Hkv):
    q, k, v = qkv(H=H, Hkv=Hkv, Lq=6, Lk=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in cases().items():
            a = scaled_dot_product_attention(q, k, v, backend=backend, **kw)
            b = scaled_dot_product_attention(q, k, v, backend="sdpa", **kw)
            assert torch.isfinite(a).all(), (backend, name)
            assert max_abs_err(a, b) <= 1e-5, (backend, name, max_abs_err(a, b))


@pytest.mark.parametrize("backend", RUNNABLE)
def test_backend_switch_and_fully_masked_rows(backend):
    q, k, v = qkv()
    m = torch.ones(2, 1, 6, 6, dtype=torch.bool); m[1, :, 3] = False             # query 3 of sample 1 sees nothing
    with warnings.catch_warnings(), attention_backend(backend):
        warnings.simplefilter("ignore")
        assert get_attention_backend() == backend
        out = L.attention(q.transpose(1, 2).flatten(2), k.transpose(1, 2).flatten(2), v.transpose(1, 2).flatten(2), 4,
                          mask=m[:, 0])
    assert torch.isfinite(out).all() and out[1, 3].abs().max() == 0
    assert get_attention_backend() == "sdpa"


def test_bf16_kernels_close():
    q, k, v = qkv(dtype=torch.bfloat16)
    ref = scaled_dot_product_attention(q, k, v, is_causal=True, backend="math")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backend in RUNNABLE:
            out = scaled_dot_product_attention(q, k, v, is_causal=True, backend=backend)
            assert out.dtype == torch.bfloat16 and max_abs_err(out, ref) < 3e-2, backend


def test_unknown_and_missing_backends(monkeypatch):
    with pytest.raises(ValueError, match=r"name='fast' is not an attention backend; allowed: \['sdpa', 'math'"):
        set_attention_backend("fast")
    assert set(ATTENTION_BACKENDS) <= set(ALL_ATTENTION_BACKENDS) and {"sdpa", "math", "sdpa_math"} <= set(ATTENTION_BACKENDS)
    monkeypatch.setattr(L, "_installed", lambda name: name not in ("flash", "sage", "xformers"))
    monkeypatch.setattr(L, "ATTENTION_BACKENDS", tuple(b for b in ALL_ATTENTION_BACKENDS if L._installed(b)))
    for backend, package in [("flash", "flash_attn"), ("sage", "sageattention"), ("xformers", "xformers")]:
        with pytest.raises(AttentionBackendUnavailable) as e: set_attention_backend(backend)
        assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)
        assert f"name={backend!r}" in str(e.value) and f"`{package}` package" in str(e.value), str(e.value)
        with pytest.raises(ImportError, match=f"backend={backend!r}"):
            scaled_dot_product_attention(*qkv(), backend=backend)
        monkeypatch.setenv("DIFFUSE_NB_ATTENTION", backend)
        with pytest.raises(ImportError, match=f"DIFFUSE_NB_ATTENTION={backend!r}"): set_attention_backend(None)
        monkeypatch.delenv("DIFFUSE_NB_ATTENTION")
    assert get_attention_backend() == "sdpa"                                 # a failed selection changes nothing


def test_missing_kernel_falls_back_with_one_warning():
    L._warned.clear()
    q, k, v = qkv(H=8, Hkv=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kw in ({}, dict(is_causal=True), {}):
            out = scaled_dot_product_attention(q, k, v, backend="sdpa_cudnn", **kw)        # no cuDNN kernel on the CPU
            assert max_abs_err(out, scaled_dot_product_attention(q, k, v, backend="sdpa", **kw)) <= 1e-6
    msgs = [str(w.message) for w in caught if "sdpa_cudnn" in str(w.message)]
    assert len(msgs) == 1 and "float32 on cpu" in msgs[0] and "using 'sdpa'" in msgs[0], msgs


# ---- the package backends, run through stand-in packages (same signatures and layouts, computed with torch)
def _bhld(x): return x.transpose(1, 2)                                          # (B, L, H, D) <-> (B, H, L, D)


def fake_packages(monkeypatch, calls):
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        calls.append("flash")
        assert q.shape[2] % k.shape[2] == 0 and q.shape[-1] == k.shape[-1]          # (B, L, H, D), kv heads divide
        return _bhld(F.scaled_dot_product_attention(_bhld(q), _bhld(k), _bhld(v), scale=softmax_scale,
                                                    is_causal=causal, enable_gqa=True))
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
        calls.append("sage")
        assert tensor_layout == "HND" and q.shape[1] == k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, scale=sm_scale, is_causal=is_causal)
    class LowerTriangularMask: pass
    def memory_efficient_attention(q, k, v, attn_bias=None, scale=None):
        calls.append("xformers")
        assert q.shape[2] == k.shape[2]
        return _bhld(F.scaled_dot_product_attention(_bhld(q), _bhld(k), _bhld(v), scale=scale,
                                                    is_causal=isinstance(attn_bias, LowerTriangularMask)))
    mods = {"flash_attn": dict(flash_attn_func=flash_attn_func), "sageattention": dict(sageattn=sageattn),
            "xformers": {}, "xformers.ops": dict(LowerTriangularMask=LowerTriangularMask,
                                                 memory_efficient_attention=memory_efficient_attention)}
    for name, attrs in mods.items():
        m = types.ModuleType(name); m.__dict__.update(attrs); m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, m)
    for backend in ("flash", "sage", "xformers"):                          # let them take CPU float32 and head_dim 8
        monkeypatch.setitem(L._NEEDS, backend, dict(devices=("cuda", "cpu"), dtypes=(torch.float32,), head_dims=None))


@pytest.mark.parametrize("backend", ["flash", "sage", "xformers"])
def test_package_backends_layout_and_fallbacks(monkeypatch, backend):
    calls = []
    fake_packages(monkeypatch, calls)
    set_attention_backend(backend)
    try:
        L._warned.clear()
        for Hkv, kw in [(8, {}), (2, {}), (2, dict(is_causal=True)), (8, dict(scale=0.3))]:
            q, k, v = qkv(H=8, Hkv=Hkv)
            n = len(calls)
            check = scaled_dot_product_attention(q, k, v, backend="math", **kw)
            assert max_abs_err(scaled_dot_product_attention(q, k, v, **kw), check) <= 1e-5 and len(calls) == n + 1
        q, k, v = qkv(H=8, Hkv=2, Lq=4, Lk=6)
        with pytest.warns(UserWarning, match="takes no attention mask.*using 'sdpa'"):
            out = scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(1, 1, 1, 6, dtype=torch.bool))
        with pytest.warns(UserWarning, match="bottom-right"):
            causal = scaled_dot_product_attention(q, k, v, is_causal=True)
        assert max_abs_err(causal, scaled_dot_product_attention(q, k, v, is_causal=True, backend="math")) <= 1e-5
        assert max_abs_err(out, scaled_dot_product_attention(q, k, v, backend="math")) <= 1e-5
        monkeypatch.setitem(L._NEEDS, backend, dict(L._NEEDS[backend], devices=("cuda",)))
        with pytest.warns(UserWarning, match=r"runs on \['cuda'\] only, not cpu"):
            scaled_dot_product_attention(*qkv())
        assert calls.count(backend) == 4
    finally: set_attention_backend("sdpa")
