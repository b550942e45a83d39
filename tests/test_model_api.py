"""The drop-in model API: what code written for diffusers / transformers expects of UNet2DConditionModel, AutoencoderKL,
CLIPTextModel(WithProjection) — round trips through save_pretrained, inference modes, return types, clear errors."""
import pytest
import torch

from diffuse_nb.clip import CLIPTextModel, CLIPTextModelWithProjection
from diffuse_nb.testing import save_reference, tiny_clip, tiny_unet, tiny_unet_config, tiny_vae, tiny_vae_config
from diffuse_nb.unet import UNet2DConditionModel
from diffuse_nb.vae import AutoencoderKL

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}


def unet_inputs(cfg, B=2):
    g = torch.Generator().manual_seed(0)
    kw = dict(sample=torch.randn(B, 4, 16, 16, generator=g), timestep=torch.tensor(500.0),
              encoder_hidden_states=torch.randn(B, 7, cfg["cross_attention_dim"], generator=g))
    if cfg.get("addition_embed_type") == "text_time":
        text = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        kw["added_cond_kwargs"] = dict(text_embeds=torch.randn(B, text, generator=g), time_ids=torch.ones(B, 6) * 64)
    return kw


def clip_ids():
    ids = torch.randint(0, 49406, (2, 9), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 49406; ids[:, -3:] = 49407
    return ids


# Each case: reference model, our class, the reference's class, a call on the reference, the same call on ours.
CASES = {
    "unet-sd": (lambda: tiny_unet("sd"), UNet2DConditionModel, "diffusers.UNet2DConditionModel",
                lambda m, ref_cfg: m(**unet_inputs(ref_cfg)).sample),
    "unet-sdxl": (lambda: tiny_unet("sdxl"), UNet2DConditionModel, "diffusers.UNet2DConditionModel",
                  lambda m, ref_cfg: m(**unet_inputs(ref_cfg)).sample),
    "vae": (lambda: tiny_vae(), AutoencoderKL, "diffusers.AutoencoderKL",
            lambda m, ref_cfg: (m.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))).sample,
                                m.encode(torch.ones(1, 3, 16, 16)).latent_dist.mean)),
    "clip": (lambda: tiny_clip(), CLIPTextModel, "transformers.CLIPTextModel",
             lambda m, ref_cfg: (m(clip_ids()).last_hidden_state, m(clip_ids()).pooler_output)),
    "clip-projection": (lambda: tiny_clip(with_projection=True), CLIPTextModelWithProjection,
                        "transformers.CLIPTextModelWithProjection",
                        lambda m, ref_cfg: (m(clip_ids()).text_embeds, m(clip_ids()).last_hidden_state)),
}


def _ref_class(name):
    lib, cls = name.split(".")
    return getattr(__import__(lib), cls)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_saved_loaded_by_us_saved_loaded_by_reference(case, tmp_path):
    make_ref, ours_cls, ref_cls, call = CASES[case]
    ref = make_ref()
    cfg = dict(ref.config) if not hasattr(ref.config, "to_dict") else ref.config.to_dict()
    ours = ours_cls.from_pretrained(save_reference(ref))
    ours.save_pretrained(tmp_path / "ours")
    back = _ref_class(ref_cls).from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        want, got, again = call(ref, cfg), call(ours, cfg), call(back, cfg)
    for a, b, c in zip(*(x if isinstance(x, tuple) else (x,) for x in (want, got, again))):
        assert torch.equal(a, b), f"{case}: ours differs from the reference"
        assert torch.equal(a, c), f"{case}: the reference reloaded from our save_pretrained differs"
    with pytest.raises(FileExistsError, match="overwrite=True"): ours.save_pretrained(tmp_path / "ours")
    ours.save_pretrained(tmp_path / "ours", overwrite=True)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("load_mode", list(MODES))
def test_every_mode_loaded_inside_or_outside(case, load_mode):
    make_ref, ours_cls, _, call = CASES[case]
    ref = make_ref()
    cfg = dict(ref.config) if not hasattr(ref.config, "to_dict") else ref.config.to_dict()
    path = save_reference(ref)
    with torch.no_grad(): want = call(ref, cfg)
    want = want if isinstance(want, tuple) else (want,)
    with MODES[load_mode](): m = ours_cls.from_pretrained(path)
    assert not any(p.is_inference() for p in m.parameters()), "weights must be ordinary tensors"
    for run_mode, ctx in MODES.items():
        with ctx(): got = call(m, cfg)
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(got, want): assert torch.equal(a.detach(), b), f"{case}: loaded {load_mode}, run {run_mode}"
    sum(g.float().square().mean() for g in got).backward()               # trainable after loading in any mode
    assert any(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("case", list(CASES))
def test_from_config_inside_inference_mode_then_train(case):
    make_ref, ours_cls, _, call = CASES[case]
    ref = make_ref()
    cfg = dict(ref.config) if not hasattr(ref.config, "to_dict") else ref.config.to_dict()
    with torch.inference_mode(): m = ours_cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    out = call(m, cfg)
    sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()


def test_return_dict_and_config_like_the_references():
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd")).eval()
    vae = AutoencoderKL.from_config(tiny_vae_config()).eval()
    clip = CLIPTextModel.from_pretrained(save_reference(tiny_clip())).eval()
    kw = unet_inputs(tiny_unet_config("sd"))
    with torch.no_grad():
        out, tup = unet(**kw), unet(**kw, return_dict=False)
        assert type(out).__name__ == "UNet2DConditionOutput" and isinstance(tup, tuple) and len(tup) == 1
        assert torch.equal(out.sample, tup[0]) and torch.equal(out[0], out["sample"])
        assert isinstance(vae.decode(torch.randn(1, 4, 8, 8), return_dict=False), tuple)
        assert isinstance(vae.encode(torch.randn(1, 3, 16, 16), return_dict=False), tuple)
        assert isinstance(clip(clip_ids(), return_dict=False), tuple)
    for m in (unet, vae, clip):
        assert m.dtype == torch.float32 and m.device == torch.device("cpu")
        cfg = m.config
        assert dict(cfg) and all(cfg[k] == getattr(cfg, k) for k in cfg) and cfg.get("not_a_key", 7) == 7
    assert unet.config["block_out_channels"] == (32, 64) and vae.config["latent_channels"] == 4


def test_torch_dtype_alias():
    path = save_reference(tiny_vae())
    assert AutoencoderKL.from_pretrained(path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16


# ---- clear errors: each names the parameter, the value and the fix
def _msg(call, exc=(ValueError, TypeError)):
    with pytest.raises(exc) as e: call()
    return str(e.value)


def test_input_dtype_differs_from_weights():
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    kw = unet_inputs(tiny_unet_config("sd"))
    m = _msg(lambda: unet(**{**kw, "sample": kw["sample"].half()}), TypeError)
    assert "sample" in m and "torch.float16" in m and "torch.float32" in m and "sample.to(torch.float32)" in m
    m = _msg(lambda: unet(**{**kw, "encoder_hidden_states": kw["encoder_hidden_states"].double()}), TypeError)
    assert "encoder_hidden_states is torch.float64" in m and "model.to(torch.float64)" in m
    vae = AutoencoderKL.from_config(tiny_vae_config())
    m = _msg(lambda: vae.decode(torch.randn(1, 4, 8, 8).bfloat16()), TypeError)
    assert "z is torch.bfloat16" in m and "z.to(torch.float32)" in m


def test_input_device_differs_from_weights():
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
        vae = AutoencoderKL.from_config(tiny_vae_config())
        clip = CLIPTextModel.from_config(dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                              num_hidden_layers=1))
    kw = unet_inputs(tiny_unet_config("sd"))
    for call, name in [(lambda: unet(**kw), "sample"), (lambda: vae.decode(torch.randn(1, 4, 8, 8)), "z"),
                       (lambda: clip(clip_ids()), "input_ids")]:
        m = _msg(call, ValueError)
        assert f"{name} is on cpu" in m and "weights are on meta" in m and f"{name}.to('meta')" in m and "model.to('cpu')" in m


@pytest.mark.parametrize("cls,cfg", [(UNet2DConditionModel, tiny_unet_config("sd")), (AutoencoderKL, tiny_vae_config())])
def test_config_dict_passed_positionally(cls, cfg):
    m = _msg(lambda: cls(cfg), TypeError)
    assert f"{cls.__name__}(config) got a dict" in m and f"{cls.__name__}.from_config(config)" in m \
        and f"{cls.__name__}(**config)" in m


@pytest.mark.parametrize("cls", [UNet2DConditionModel, AutoencoderKL])
def test_empty_block_out_channels(cls):
    m = _msg(lambda: cls(block_out_channels=()), ValueError)
    assert "block_out_channels=()" in m and "e.g." in m


def test_sdxl_inputs_to_a_non_sdxl_unet():
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    kw = unet_inputs(tiny_unet_config("sd"), B=1)
    extras = dict(text_embeds=torch.zeros(1, 32), time_ids=torch.zeros(1, 6))
    m = _msg(lambda: unet(**kw, added_cond_kwargs=extras), ValueError)
    assert "added_cond_kwargs=['text_embeds', 'time_ids']" in m and "addition_embed_type=None" in m \
        and "drop added_cond_kwargs" in m and "addition_embed_type='text_time'" in m
    with torch.no_grad(): unet(**kw, added_cond_kwargs={}); unet(**kw, added_cond_kwargs=None)   # nothing to ignore


def test_unsupported_diffusers_arguments_are_refused():
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    kw = unet_inputs(tiny_unet_config("sd"), B=1)
    m = _msg(lambda: unet(**kw, mid_block_additional_residual=torch.zeros(1)), ValueError)
    assert "mid_block_additional_residual" in m and "pass None" in m


def test_dtype_check_on_meta_models():
    "A dtype mismatch on a `meta` model (shape planning) is the clear TypeError, not autocast's RuntimeError."
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(tiny_vae_config())
        z = torch.randn(1, 4, 8, 8, dtype=torch.float16)
    m = _msg(lambda: vae.decode(z), TypeError)
    assert "z is torch.float16" in m and "weights are torch.float32" in m
