"`diffuse_nb.ltx2_dit` and `ltx2_dit_offload` against diffusers' LTX-2 DiT: parity, offloading, sizes, bad input."
import subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from diffuse_nb.ltx2_connectors import LTX2Attention
from diffuse_nb.ltx2_dit import LTX2DiTInputs, LTX2VideoTransformer3DModel
from diffuse_nb.ltx2_dit_blocks import (LTX2_DIT, LTX23_DIT, LTX2VideoTransformer3DConfig, LTX2VideoTransformerBlock,
                                        perturbed_attention)
from diffuse_nb.ltx2_dit_offload import (DiTOffloader, OneDNNLinear, dit_memory_estimate, dit_offload_plan,
                                         dit_offloaded_forward, ltx2_token_counts, release_dit_offload,
                                         use_onednn_linear)
from diffuse_nb.memory import MemoryProfile
from diffuse_nb.rope import rope_cos_sin
from diffuse_nb.testing import max_abs_err, randomize_, save_reference, temp_dir

ref_ltx2 = pytest.importorskip("diffusers.models.transformers.transformer_ltx2")

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
            audio_cross_attention_dim=8, num_layers=2, caption_channels=32, rope_double_precision=False)
CONFIGS = {
    "split": dict(TINY, rope_type="split"),
    "interleaved": dict(TINY, rope_type="interleaved"),
    "ltx23": dict(TINY, **LTX23_DIT),
    "other": dict(TINY, **{**LTX23_DIT, "audio_gated_attn": False}, use_prompt_adaln_single=False,
                  use_keyframes_abs_pos_embedding=True,
                  ff_bias=False, audio_ff_bias=False, norm_elementwise_affine=True, patch_size=2, patch_size_t=2,
                  num_layers=3, rope_double_precision=True),
}


def tiny_reference(config, seed=0):
    torch.manual_seed(seed)
    return randomize_(ref_ltx2.LTX2VideoTransformer3DModel(**config), std=0.2, seed=seed).eval()


def dit_inputs(config, B=2, F=3, H=4, W=5, audio_frames=7, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = LTX2VideoTransformer3DConfig(**config)
    Nv = -(-F // c.patch_size_t) * -(-H // c.patch_size) * -(-W // c.patch_size)
    pw, apw = ((c.caption_channels,) * 2 if c.use_prompt_embeddings else
               (c.cross_attention_dim, c.audio_cross_attention_dim))
    mask = torch.ones(B, L, dtype=torch.long); mask[0, :2] = 0
    t = torch.rand(B, generator=g) * 1000
    kf = (torch.arange(Nv) < 4).float()[None, :, None].repeat(B, 1, 1) if c.use_keyframes_abs_pos_embedding else None
    return dict(hidden_states=torch.randn(B, Nv, c.in_channels, generator=g),
                audio_hidden_states=torch.randn(B, audio_frames, c.audio_in_channels, generator=g),
                encoder_hidden_states=torch.randn(B, L, pw, generator=g),
                audio_encoder_hidden_states=torch.randn(B, L, apw, generator=g), timestep=t, sigma=t,
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=F, height=H, width=W,
                audio_num_frames=audio_frames, video_keyframes_mask=kf)


def variants(inputs):
    B, Nv = inputs["hidden_states"].shape[:2]
    t, audio_t = inputs["timestep"], inputs["timestep"] * 0.5
    per_token = t[:, None].repeat(1, Nv); per_token[:, :3] = 0.0
    return {"plain": {},
            "cross_t": dict(use_cross_timestep=True, audio_timestep=audio_t, audio_sigma=audio_t),
            "isolated": dict(isolate_modalities=True),
            "stg_all": dict(spatio_temporal_guidance_blocks=[1]),
            "stg_sample0": dict(spatio_temporal_guidance_blocks=[0, 1],
                                perturbation_mask=torch.tensor([0.0, 1.0])),
            "stg_blend": dict(spatio_temporal_guidance_blocks=[1],
                              perturbation_mask=torch.tensor([[[0.25]], [[1.0]]])),
            "per_token_t": dict(timestep=per_token, audio_timestep=audio_t),
            "coords": dict(video_coords=None, audio_coords=None)}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    ref = tiny_reference(CONFIGS[request.param])
    return request.param, ref, LTX2VideoTransformer3DModel.from_pretrained(save_reference(ref))


@pytest.mark.parametrize("variant", list(variants(dit_inputs(TINY))))
def test_parity(pair, variant):
    name, ref, ours = pair
    inputs = dit_inputs(CONFIGS[name])
    args = {**inputs, **variants(inputs)[variant]}
    if variant == "coords":                                   # coordinates passed in, as the pipeline does
        args["video_coords"] = ref.rope.prepare_video_coords(2, 3, 4, 5, torch.device("cpu"), fps=24.0)
        args["audio_coords"] = ref.audio_rope.prepare_audio_coords(2, 7, torch.device("cpu"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = ours(**args), ref(**args, return_dict=False)
        assert isinstance(ours(**args, return_dict=False), tuple)
    assert max_abs_err(tuple(got.to_tuple()), want) <= 1e-5


def test_switches_change_the_prediction(pair):
    "A parity that holds with every switch doing nothing would prove little: each switch must move the output."
    name, ref, ours = pair
    inputs = dit_inputs(CONFIGS[name])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ours(**inputs).sample
        for variant, extra in variants(inputs).items():
            if variant in ("plain", "coords") or (variant.startswith("stg") and name in ("split", "interleaved")):
                continue
            assert max_abs_err(ours(**{**inputs, **extra}).sample, plain) > 1e-3, variant


def test_parity_detects_a_changed_weight(pair):
    name, ref, ours = pair
    other = LTX2VideoTransformer3DModel.from_config(ours.config)
    other.load_state_dict(ours.state_dict())
    inputs = dit_inputs(CONFIGS[name])
    with torch.no_grad():
        other.transformer_blocks[1].audio_to_video_attn.to_v.weight[0, 0] += 0.5
        assert max_abs_err(other(**inputs).sample, ref(**inputs, return_dict=False)[0]) > 1e-4


def test_grad_and_inference_modes():
    ref = tiny_reference(CONFIGS["ltx23"])
    ours = LTX2VideoTransformer3DModel.from_pretrained(save_reference(ref))
    inputs = dit_inputs(CONFIGS["ltx23"])
    with torch.no_grad(): want = ref(**inputs, return_dict=False)
    with torch.inference_mode(): assert max_abs_err(tuple(ours(**inputs).to_tuple()), want) <= 1e-5
    out = ours(**inputs)
    out.sample.sum().backward()
    assert ours.transformer_blocks[0].attn1.to_q.weight.grad is not None


def test_block_parity_with_stg():
    cfg = dict(dim=16, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_dim=8,
               audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
               video_gated_attn=True, video_cross_attn_adaln=True, audio_gated_attn=False,
               audio_cross_attn_adaln=True, rope_type="interleaved", perturbed_attn=True)
    ref = randomize_(ref_ltx2.LTX2VideoTransformerBlock(**cfg), std=0.2).eval()
    ours = LTX2VideoTransformerBlock(**cfg).eval()
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    rope = lambda N, P, dim: rope_cos_sin(torch.rand(2, P, N, generator=g) * 10, dim, (20.0,) * P)
    args = dict(hidden_states=r(2, 9, 16), audio_hidden_states=r(2, 4, 8), encoder_hidden_states=r(2, 5, 16),
                audio_encoder_hidden_states=r(2, 5, 8), temb=r(2, 1, 9 * 16), temb_audio=r(2, 4, 9 * 8),
                temb_ca_scale_shift=r(2, 1, 64), temb_ca_audio_scale_shift=r(2, 1, 32), temb_ca_gate=r(2, 1, 16),
                temb_ca_audio_gate=r(2, 1, 8), temb_prompt=None, temb_prompt_audio=r(2, 1, 16),
                video_rotary_emb=rope(9, 3, 16), audio_rotary_emb=rope(4, 1, 8), ca_video_rotary_emb=rope(9, 1, 8),
                ca_audio_rotary_emb=rope(4, 1, 8))
    for extra in ({}, dict(perturbation_mask=torch.tensor([0.0, 1.0])[:, None, None], all_perturbed=False),
                  dict(perturbation_mask=torch.zeros(2, 1, 1), all_perturbed=True),
                  dict(use_a2v_cross_attention=False), dict(use_v2a_cross_attention=False)):
        with torch.no_grad():
            assert max_abs_err(ours(**args, **extra), ref(**args, **extra)) <= 1e-5


def test_perturbed_attention_without_mask_is_attention():
    attn = randomize_(LTX2Attention(16, heads=2, kv_heads=2, dim_head=8, apply_gated_attention=True), std=0.3)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert max_abs_err(perturbed_attention(attn, x), attn(x)) <= 1e-6
        v_only = attn.to_out[0](attn.to_v(x) * (2 * torch.sigmoid(attn.to_gate_logits(x))).repeat_interleave(8, -1))
        assert max_abs_err(perturbed_attention(attn, x, perturbation_mask=torch.zeros(2, 1, 1)), v_only) <= 1e-6


def test_save_pretrained_loads_in_diffusers():
    ref = tiny_reference(CONFIGS["other"], seed=3)
    ours = LTX2VideoTransformer3DModel.from_pretrained(save_reference(ref))
    folder = ours.save_pretrained(temp_dir() / "transformer")
    back = ref_ltx2.LTX2VideoTransformer3DModel.from_pretrained(folder).eval()
    inputs = dit_inputs(CONFIGS["other"], seed=4)
    with torch.no_grad():
        assert max_abs_err(tuple(ours(**inputs).to_tuple()), back(**inputs, return_dict=False)) <= 1e-6
    with pytest.raises(FileExistsError): ours.save_pretrained(folder)


def test_full_size_on_meta():
    with torch.device("meta"):
        full = LTX2VideoTransformer3DModel()
        ref = ref_ltx2.LTX2VideoTransformer3DModel(**LTX2_DIT)
        full23 = LTX2VideoTransformer3DModel(**LTX23_DIT)
        ref23 = ref_ltx2.LTX2VideoTransformer3DModel(**LTX23_DIT)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(full) == 18_876_174_592 == count(ref)
    assert count(full23) == count(ref23)
    assert sorted(full23.state_dict()) == sorted(ref23.state_dict())
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == \
           {k: tuple(v.shape) for k, v in ref.state_dict().items()}


BAD = [
    (dict(audio_hidden_states=torch.randn(1, 7, 4)), ValueError, "batches must match"),
    (dict(height=5), ValueError, "gives 75 patches"),
    (dict(num_frames=None), ValueError, "num_frames=None"),
    (dict(encoder_hidden_states=torch.randn(2, 6, 32)), ValueError, "cross_attention_dim=16"),
    (dict(audio_encoder_hidden_states=torch.randn(2, 6, 16)), ValueError, "audio_cross_attention_dim=8"),
    (dict(hidden_states=torch.randn(2, 60, 3)), ValueError, "in_channels=4"),
    (dict(hidden_states=torch.randn(2, 60)), ValueError, "3 dimensions"),
    (dict(hidden_states=[1.0]), TypeError, "torch.Tensor"),
    (dict(audio_num_frames=6), ValueError, "audio_num_frames=6"),
    (dict(video_coords=torch.zeros(2, 3, 59, 2)), ValueError, "(2, 3, 60, 2)"),
    (dict(audio_coords=torch.zeros(2, 1, 8, 2)), ValueError, "(2, 1, 7, 2)"),
    (dict(timestep=torch.rand(3)), ValueError, "one value per sample (2,)"),
    (dict(audio_timestep=torch.rand(2, 8)), ValueError, "audio_timestep has shape (2, 8)"),
    (dict(sigma=None), ValueError, "sigma is required"),
    (dict(perturbation_mask=torch.ones(2, 4)), ValueError, "perturbation_mask"),
    (dict(spatio_temporal_guidance_blocks=1), TypeError, "list of block indices"),
    (dict(encoder_attention_mask=torch.ones(2, 5)), ValueError, "encoder_attention_mask has shape (2, 5)"),
    (dict(video_self_attention_mask=torch.ones(2, 60, 59)), ValueError, "video_self_attention_mask"),
    (dict(hidden_states=torch.randn(2, 60, 4).double()), TypeError, "computes in torch.float32"),
]


@pytest.mark.parametrize("bad,err,contains", BAD)
def test_bad_input(bad, err, contains):
    model = LTX2VideoTransformer3DModel(**CONFIGS["ltx23"]).eval()
    with pytest.raises(err, match=None) as e: model(**{**dit_inputs(CONFIGS["ltx23"]), **bad})
    assert contains in str(e.value)


def test_caption_width_ltx20():
    model = LTX2VideoTransformer3DModel(**CONFIGS["split"]).eval()
    with pytest.raises(ValueError, match="caption_channels=32"):
        model(**{**dit_inputs(CONFIGS["split"]), "encoder_hidden_states": torch.randn(2, 6, 16)})


def test_bad_input_raises_before_any_compute(monkeypatch):
    model = LTX2VideoTransformer3DModel(**CONFIGS["split"]).eval()
    monkeypatch.setattr(model, "prepare", lambda *a, **k: pytest.fail("computed before checking"))
    with pytest.raises(ValueError): model(**{**dit_inputs(CONFIGS["split"]), "height": 9})


def test_stg_warnings():
    model = LTX2VideoTransformer3DModel(**CONFIGS["split"]).eval()
    with pytest.warns(UserWarning, match="perturbed_attn=False"), torch.no_grad():
        model(**dit_inputs(CONFIGS["split"]), spatio_temporal_guidance_blocks=[0])
    model = LTX2VideoTransformer3DModel(**CONFIGS["ltx23"]).eval()
    with pytest.warns(UserWarning, match=r"\[28\] are not blocks"), torch.no_grad():
        model(**dit_inputs(CONFIGS["ltx23"]), spatio_temporal_guidance_blocks=[28])


@pytest.mark.parametrize("bad,contains", [
    (dict(audio_cross_attention_dim=16), "must equal the audio"), (dict(rope_type="rotary"), "rope_type"),
    (dict(cross_attention_dim=8), "use_prompt_embeddings"), (dict(num_layers=0), "num_layers=0"),
    (dict(attention_head_dim=7, cross_attention_dim=14), "must be even"), (dict(qk_norm="rms_norm"), "qk_norm"),
    (dict(vae_scale_factors=(8, 32)), "vae_scale_factors")])
def test_bad_config(bad, contains):
    with pytest.raises(ValueError) as e: LTX2VideoTransformer3DConfig(**{**TINY, **bad})
    assert contains in str(e.value)


# --- layer by layer ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3])
def test_offloaded_equals_resident(n):
    config = dict(CONFIGS["ltx23"], num_layers=3)
    model = randomize_(LTX2VideoTransformer3DModel(**config), std=0.2).eval()
    inputs = dict(dit_inputs(config), spatio_temporal_guidance_blocks=[1], use_cross_timestep=True,
                  perturbation_mask=torch.tensor([0.0, 1.0]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(**inputs)
        with DiTOffloader(model, device="cpu", blocks_per_group=n) as run:
            got = run(**inputs)
            assert run.stats["loads"] == 1 + -(-3 // n)
        assert max_abs_err(tuple(got.to_tuple()), tuple(want.to_tuple())) <= 1e-6
        assert max_abs_err(tuple(model(**inputs).to_tuple()), tuple(want.to_tuple())) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_offloaded_transfer_dtype():
    config = dict(CONFIGS["interleaved"], num_layers=3)
    model = randomize_(LTX2VideoTransformer3DModel(**config), std=0.2).eval()
    inputs = dit_inputs(config)
    rounded = LTX2VideoTransformer3DModel(**config).eval(); rounded.load_state_dict(model.state_dict())
    with torch.no_grad():
        for m in rounded.transformer_blocks.modules():
            if isinstance(m, nn.Linear): m.weight.copy_(m.weight.bfloat16().float())
        want = rounded(**inputs)
        run = DiTOffloader(model, "cpu", 2, transfer_dtype=torch.bfloat16)
        got = run(**inputs)
        assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
        assert max_abs_err(tuple(got.to_tuple()), tuple(want.to_tuple())) <= 1e-6
        run.detach()
        assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float32
        assert max_abs_err(tuple(model(**inputs).to_tuple()), tuple(want.to_tuple())) <= 1e-6


def test_dit_offloaded_forward_keeps_one_offloader():
    config = CONFIGS["split"]
    model = randomize_(LTX2VideoTransformer3DModel(**config), std=0.2).eval()
    inputs = dit_inputs(config)
    profile = MemoryProfile("t", devices={"transformer": "cpu"}, offload={"transformer": "block"},
                            dtype=torch.float32)
    with torch.no_grad():
        want = model(**inputs)
        for _ in range(2):
            out = dit_offloaded_forward(model, **inputs, profile=profile)
            assert max_abs_err(tuple(out.to_tuple()), tuple(want.to_tuple())) <= 1e-6
        off = model._dit_offloader
        assert off.stats["loads"] == 2 * 3 and off.device == torch.device("cpu")
        plan = dit_offload_plan(model, profile, blocks_per_group=2)
        dit_offloaded_forward(model, **inputs, plan=plan)
        assert model._dit_offloader is not off and model._dit_offloader.blocks_per_group == 2
        release_dit_offload(model)
        assert "_dit_offloader" not in model.__dict__
        assert max_abs_err(tuple(model(**inputs).to_tuple()), tuple(want.to_tuple())) == 0


def test_offloader_checks():
    model = LTX2VideoTransformer3DModel(**CONFIGS["split"]).eval()
    with pytest.raises(ValueError, match="blocks_per_group=3"): DiTOffloader(model, "cpu", 3)
    with pytest.raises(ValueError, match="blocks_per_group=0"): dit_offload_plan(model, device="cpu",
                                                                                 blocks_per_group=0)
    with pytest.raises(TypeError, match="MemoryProfile"): dit_offload_plan(model, profile="extreme")
    run = DiTOffloader(model, "cpu", 1)
    inputs = dit_inputs(CONFIGS["split"])
    with pytest.raises(ValueError, match="batches must match"):
        run(**{**inputs, "audio_hidden_states": torch.randn(1, 7, 4)})
    assert not run.offloader.attached                          # refused before the weights were touched


def test_plan_full_size():
    with torch.device("meta"): full = LTX2VideoTransformer3DModel(**LTX2_DIT)
    assert ltx2_token_counts() == dict(video=6144, audio=126, prompt=1024)
    p = dit_offload_plan(full, vram_gb=8, device="cuda", compute_dtype="bf16")
    assert p.blocks_per_group == 4 and p.estimated_peak_bytes <= 8 * 2 ** 30
    p8 = dit_offload_plan(full, vram_gb=8, device="cuda", compute_dtype="bf16", transfer_dtype=torch.float8_e4m3fn)
    assert p8.blocks_per_group > p.blocks_per_group and p8.estimated_peak_bytes <= 8 * 2 ** 30
    est = dit_memory_estimate(full, 1)
    assert 0.6e9 < est["rest"] < 0.75e9 and 1.5e9 < est["groups"] < 1.6e9     # 345 M and 2 × 386 M bf16 params
    with pytest.warns(UserWarning, match="even one block at a time"):
        assert dit_offload_plan(full, vram_gb=1, device="cuda").blocks_per_group == 1


def test_onednn_linear():
    if not torch.backends.mkldnn.is_available(): pytest.skip("no oneDNN in this build")
    model = randomize_(LTX2VideoTransformer3DModel(**CONFIGS["ltx23"]), std=0.2).eval()
    inputs = dit_inputs(CONFIGS["ltx23"])
    keys = list(model.state_dict())
    with torch.no_grad():
        want = model(**inputs)
        got = use_onednn_linear(model)(**inputs)
    assert max_abs_err(tuple(got.to_tuple()), tuple(want.to_tuple())) <= 1e-5
    assert list(model.state_dict()) == keys and isinstance(model.proj_out, OneDNNLinear)
    model(**inputs).sample.sum().backward()                    # with gradients it is the plain nn.Linear
    assert model.proj_out.weight.grad is not None
    assert type(use_onednn_linear(model, enable=False).proj_out) is nn.Linear


@pytest.mark.slow
def test_gpu_script_dry_run():
    root = Path(__file__).parent.parent
    out = subprocess.run([sys.executable, str(root / "bench" / "gpu_ltx2_dit.py"), "--dry-run"], capture_output=True,
                         text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| ours (DiTOffloader)" in out.stdout and "| diffusers enable_group_offload" in out.stdout
