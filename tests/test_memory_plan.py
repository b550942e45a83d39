"""Tests for diffuse_nb.memory_plan: exact encoded bytes, component sizes, meta activation counts (with replayed
layers), the CPU model's terms, plans from folders, the strategy table."""
import copy, json, warnings

import pytest
import torch
from torch import nn

from diffuse_nb.memory_plan import (CPU_FORMATS, GiB, WEIGHT_FORMATS, LiveTensorBytes, _peak, component_size,
                                    components_from_folder, cpu_peak_bytes, cpu_phase_bytes, dit_activation_bytes,
                                    encoded_bytes, ltx2_vae_decode_activation_bytes, measure, memory_plan, plan_table,
                                    recommended, text_encoder_activation_bytes, unet_activation_bytes)
from diffuse_nb.quantize import apply_layerwise_casting, quantize_, weight_bytes
from diffuse_nb.testing import temp_dir, tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_encoded_bytes_equal_real_encodings(kind):
    with torch.device("meta"): meta = UNet2DConditionModel.from_config(tiny_unet_config(kind))
    real = UNet2DConditionModel.from_config(tiny_unet_config(kind)).eval().half()
    assert encoded_bytes(meta, "float16") == weight_bytes(real)
    assert encoded_bytes(meta, "float32") == 2 * weight_bytes(real)
    assert encoded_bytes(meta, "float8") == weight_bytes(apply_layerwise_casting(copy.deepcopy(real),
                                                                                 torch.float8_e4m3fn))
    for fmt in ("int8", "nf4"):
        assert encoded_bytes(meta, fmt) == weight_bytes(quantize_(copy.deepcopy(real), fmt))
    assert encoded_bytes(meta, "int8", torch.float32) == weight_bytes(quantize_(real.float(), "int8"))


def test_component_size_and_measure():
    seq = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 16), nn.Conv2d(16, 8, 3), nn.LayerNorm(8))
    s = component_size(seq, "seq")
    assert s.params == 160 + 16 * 16 + 16 + 16 * 8 * 9 + 8 + 16 and s.leaf_bytes == (16 * 8 * 9 + 8) * 2
    assert (s.block_bytes, s.rest_bytes, s.n_blocks) == (s.leaf_bytes, 32, 3) and set(s.bytes) == set(WEIGHT_FORMATS)
    assert set(s.cpu_bytes) == set(CPU_FORMATS) and s.cpu_bytes["float32"] == 2 * s.bytes["float16"]
    assert (s.embedding_bytes, s.conv_bytes, s.layer_bytes) == (640, (16 * 8 * 9 + 8) * 4, (16 * 8 * 9 + 8) * 4)
    assert s.kind == "Sequential" and s.encoder_bytes == 0

    class Pipe: unet, vae, text_encoder = seq, None, nn.Linear(2, 2)
    assert set(measure(Pipe())) == {"unet", "text_encoder"}
    assert set(measure({"a": seq})) == {"a"} and list(measure(seq)) == ["Sequential"]
    with pytest.raises(TypeError, match="measure needs"): measure([seq])
    with pytest.raises(ValueError, match="weight_format='int4'"): encoded_bytes(seq, "int4")


def test_live_tensor_bytes_counts_views_and_frees():
    with LiveTensorBytes() as meter:
        a = torch.ones(1024, device="meta"); b = a * 2; c = b + 1
        del b; d = c.view(32, 32) * 3
    assert meter.peak == 3 * 4096


def test_activations_scale_with_batch_and_pixels():
    with torch.device("meta"): unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    a1 = unet_activation_bytes(unet, 128, 128, 1)
    assert unet_activation_bytes(unet, 128, 128, 2) == pytest.approx(2 * a1, rel=0.05)
    assert unet_activation_bytes(unet, 256, 256, 1) > 3 * a1
    assert unet_activation_bytes(unet, 128, 128, 1, torch.float32) == pytest.approx(2 * a1, rel=0.05)


def test_replayed_layers_count_the_same_as_traced_ones():
    from diffuse_nb.gemma3 import GEMMA3_12B, Gemma3TextModel
    from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel
    from diffuse_nb.ltx2_pipeline import _TINY
    import diffuse_nb.memory_plan as mp
    cfg = dict(GEMMA3_12B, num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16)
    with torch.device("meta"):
        gemma, dit = (Gemma3TextModel.from_config(cfg),
                      LTX2VideoTransformer3DModel(**{**_TINY["transformer"], "num_layers": 4}))
    replayed = (text_encoder_activation_bytes(gemma, 256, 2, torch.float32), dit_activation_bytes(dit, 128, 128, 17))
    plain = lambda fn, model=None, stacks=(), cpu=False: _peak(fn)          # no layer replayed
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setattr(mp, "_peak", plain)
        traced = (text_encoder_activation_bytes(gemma, 256, 2, torch.float32), dit_activation_bytes(dit, 128, 128, 17))
    assert replayed == traced and min(replayed) > 0
    assert text_encoder_activation_bytes(gemma, 512, 2, torch.float32) > 1.9 * replayed[0]


def test_ltx2_vae_decode_whole_and_tiled():
    from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video
    cfg = dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8,
               decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(1, 1, 1, 1))
    with torch.device("meta"): vae = AutoencoderKLLTX2Video.from_config(cfg)
    whole = ltx2_vae_decode_activation_bytes(vae, 256, 256, 33, dtype=torch.float32)
    tiled = ltx2_vae_decode_activation_bytes(vae, 256, 256, 33, dtype=torch.float32, tiles=(128, 96, 16, 8))
    out = 3 * 33 * 256 * 256 * 4                                   # the decoded video itself
    assert out < whole and out < tiled and tiled != whole
    import diffuse_nb.memory_plan as mp
    with pytest.MonkeyPatch.context() as mpatch:                   # every tile traced: within 1 %
        mpatch.setattr(mp, "_peak", lambda fn, model=None, stacks=(), cpu=False: _peak(fn))
        traced = ltx2_vae_decode_activation_bytes(vae, 256, 256, 33, dtype=torch.float32, tiles=(128, 96, 16, 8))
    assert traced <= tiled <= 1.01 * traced


def _sizes_acts():
    with torch.device("meta"): unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    return {"unet": unet}, {"unet": 10 * 2**20}


def test_cpu_phase_terms():
    mods, acts = _sizes_acts()
    sizes = measure(mods)
    f32 = cpu_phase_bytes(sizes, acts)
    assert list(f32) == ["denoise"] and set(f32["denoise"]) == {"baseline", "weights", "activations", "workspace"}
    assert f32["denoise"]["weights"] == sizes["unet"].cpu_bytes["float32"] and f32["denoise"]["activations"] == acts["unet"]
    assert f32["denoise"]["workspace"] == int(0.2 * sizes["unet"].conv_bytes)
    nf4 = cpu_phase_bytes(sizes, acts, "nf4")["denoise"]
    assert nf4["weights"] == sizes["unet"].cpu_bytes["nf4"] and nf4["workspace"] == 5 * sizes["unet"].layer_bytes
    assert cpu_peak_bytes(sizes, acts, "nf4") < cpu_peak_bytes(sizes, acts)
    with pytest.raises(ValueError, match="fmt='float16'"): cpu_phase_bytes(sizes, acts, "float16")


def test_memory_plan_fits_and_order():
    mods, acts = _sizes_acts()
    unet = mods["unet"]
    plan = memory_plan(mods, vram_gb=100, ram_gb=100, activations=acts)
    assert len(plan) == 24 and all(s.fits for s in plan)
    assert (plan[0].offload, plan[0].weight_format, plan[0].profile) == ("all on GPU", "float16", "full_gpu")
    assert plan[0].vram == encoded_bytes(unet, "float16") + acts["unet"]
    cpu = [s for s in plan if s.offload == "all on CPU"]
    assert len(cpu) == 4 and all(s.vram == 0 and s.profile == "cpu_only" for s in cpu)
    need = encoded_bytes(unet, "nf4") + acts["unet"] + component_size(unet).layer_bytes // 2
    tight = memory_plan(mods, vram_gb=need / GiB + 1e-6, ram_gb=0.0, activations=acts)
    assert not any(s.fits for s in tight) and recommended(tight) is None
    tight = memory_plan(mods, vram_gb=need / GiB + 1e-6, ram_gb=1.0, activations=acts)
    fitting = [s for s in tight if s.fits]
    assert fitting and all(s.vram <= need + GiB * 1e-6 for s in fitting) and recommended(tight) is fitting[0]
    assert not next(s for s in tight if (s.offload, s.weight_format) == ("all on GPU", "float16")).fits
    assert "recommended" in plan_table(tight) and plan_table(tight, only_fitting=True).count("\n") == 1 + len(fitting)
    with pytest.raises(ValueError, match="vram_gb=-1 must be"): memory_plan(mods, vram_gb=-1)


def test_folders_single_models_and_errors():
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    folder = unet.save_pretrained(temp_dir() / "unet")
    found = components_from_folder(folder)
    assert list(found) == ["unet"] and next(found["unet"].parameters()).device.type == "meta"
    assert measure(found)["unet"].bytes == component_size(unet, "unet").bytes
    assert memory_plan(folder, vram_gb=1, ram_gb=4, height=64, width=64)[0].fits
    empty, odd = temp_dir() / "empty", temp_dir() / "odd"
    empty.mkdir(); odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ValueError, match="neither model_index.json"): components_from_folder(empty)
    with pytest.raises(ValueError, match="names class 'FluxTransformer2DModel'"): components_from_folder(odd)
    with pytest.raises(FileNotFoundError, match="is not a folder"): components_from_folder(empty / "nowhere")
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                     "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    with pytest.raises(ValueError, match="names no model class"): components_from_folder(odd)


def test_pipeline_folders():
    pytest.importorskip("diffusers")
    from diffuse_nb.sd import load_pipeline, tiny_pipeline
    _, folder = tiny_pipeline("sd")
    found = components_from_folder(folder)
    assert set(found) == {"text_encoder", "unet", "vae"}
    loaded = load_pipeline(folder, profile="cpu_only")
    assert {n: s.bytes for n, s in measure(found).items()} == {n: s.bytes for n, s in measure(loaded).items()}
    plan = memory_plan(folder, vram_gb=1, ram_gb=8, height=64, width=64)
    assert recommended(plan).profile == "full_gpu"


@pytest.mark.slow
def test_ltx2_pipeline_folder():
    pytest.importorskip("diffusers")
    from diffuse_nb.ltx2_pipeline import tiny_ltx2_pipeline
    _, folder = tiny_ltx2_pipeline()
    assert set(components_from_folder(folder)) == {"text_encoder", "connectors", "transformer", "vae", "audio_vae",
                                                   "vocoder"}
    plan = memory_plan(folder, vram_gb=1, ram_gb=8, height=64, width=64, num_frames=9)
    assert recommended(plan).profile == "high" and len(plan) == 24
