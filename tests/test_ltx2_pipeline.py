"LTX-2 memory profiles (thresholds, forced on the CPU), lazy loading, prompt-embedding files (`ltx2_pipeline`)."
import json

import numpy as np
import pytest
import torch

import diffuse_nb.ltx2_pipeline as lp
from diffuse_nb.ltx2_pipeline import (LTX2_COMPONENTS, LTX2_PROFILE_NAMES, LTX2_VRAM_THRESHOLDS, PromptEmbeds,
                                      LTX2MemoryProfile, latent_video_tokens, load_ltx2_pipeline, ltx2_ram_need,
                                      ltx2_memory_profile, read_ltx2_index, read_prompt_embeds,
                                      resolve_ltx2_profile, select_ltx2_profile, validate_resolution,
                                      write_prompt_embeds)
from diffuse_nb.memory import MemoryProfile

# --- auto: each side of every threshold (injected VRAM and RAM) -------------------------------------------------
EPS = 0.01
VRAM_SIDES = [(t, n) for n, t in LTX2_VRAM_THRESHOLDS.items() if t > 0] + \
             [(t - EPS, LTX2_PROFILE_NAMES[i + 1]) for i, t in enumerate(list(LTX2_VRAM_THRESHOLDS.values())[:-1])]


@pytest.mark.parametrize("vram,want", VRAM_SIDES + [(0, "cpu_only"), (141, "high")])
def test_auto_picks_by_vram_on_each_side(vram, want, monkeypatch):
    assert select_ltx2_profile(vram) == want
    assert ltx2_memory_profile(vram_gb=vram, ram_gb=128).name == want
    monkeypatch.setattr(lp, "vram_info", lambda *a, **k: (float(vram), 141.0))          # measured, injected
    monkeypatch.setattr(lp, "ram_info", lambda: (128.0, 256.0))
    assert resolve_ltx2_profile("auto", gpu="cpu").name == want


KEEP, PIN, F32 = ltx2_ram_need(2, True), ltx2_ram_need(2, False), ltx2_ram_need(4, False)


@pytest.mark.parametrize("vram", [16, 12])
def test_ram_decides_keeping_the_text_encoder_and_pinning(vram):
    for ram, freed, pinned in [(KEEP, False, True), (KEEP - EPS, True, True), (PIN, True, True),
                               (PIN - EPS, True, False)]:
        p = ltx2_memory_profile(vram_gb=vram, ram_gb=ram)
        assert (p.free_text_encoder, p.pin_memory) == (freed, pinned), (vram, ram)


@pytest.mark.parametrize("vram", [8, 6])
def test_small_gpus_always_free_the_text_encoder(vram):
    for ram, pinned in [(500, True), (PIN, True), (PIN - EPS, False)]:
        p = ltx2_memory_profile(vram_gb=vram, ram_gb=ram)
        assert p.free_text_encoder and p.pin_memory == pinned and p.devices["text_encoder"] == "cpu"
        assert p.cfg_mode == "sequential" and p.offload["transformer"] == "block"


def test_cpu_only_dtype_by_ram():
    assert ltx2_memory_profile(vram_gb=0, ram_gb=F32).cpu_dtype == torch.float32
    assert ltx2_memory_profile(vram_gb=0, ram_gb=F32 - EPS).cpu_dtype == torch.bfloat16
    assert set(ltx2_memory_profile(vram_gb=0, ram_gb=8).devices.values()) == {"cpu"}


def test_profiles_say_where_everything_lives():
    for name in LTX2_PROFILE_NAMES:
        p = ltx2_memory_profile(name=name, ram_gb=128)
        assert isinstance(p, LTX2MemoryProfile) and set(p.devices) == set(LTX2_COMPONENTS)
        assert p.vae_tiles and p.ram_gb > 0 and p.vram_gb == LTX2_VRAM_THRESHOLDS[name]
        if name != "cpu_only":
            assert p.devices["transformer"] == "cuda" and p.blocks_per_group >= 1 and p.max_video_tokens
    sizes = [ltx2_memory_profile(name=n, ram_gb=128).max_video_tokens for n in LTX2_PROFILE_NAMES[:-1]]
    assert sizes == sorted(sizes, reverse=True)                  # less VRAM, smaller videos
    tiles = [ltx2_memory_profile(name=n, ram_gb=128).vae_tiles[0] for n in ("medium", "low", "very_low")]
    assert tiles == sorted(tiles, reverse=True)
    assert ltx2_memory_profile(name="low", ram_gb=128).max_video_tokens >= latent_video_tokens(512, 768, 121)


@pytest.mark.parametrize("bad,exc,msg", [
    (dict(name="tiny"), ValueError, "memory_profile='tiny'"),
    (dict(vram_gb=-1), ValueError, "vram_gb=-1"),
    (dict(ram_gb="lots"), ValueError, "ram_gb='lots'")])
def test_profile_bad_input(bad, exc, msg):
    with pytest.raises(exc, match=msg): ltx2_memory_profile(**{"ram_gb": 64, **bad})


def test_resolve_refuses_image_profiles_and_missing_gpus():
    with pytest.raises(TypeError, match="image-pipeline MemoryProfile"):
        resolve_ltx2_profile(MemoryProfile("x", {"unet": "cpu"}, {}))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError): resolve_ltx2_profile("high", ram_gb=64)


# --- sizes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [((500, 768, 121), "height=500 is not a multiple of 32"),
                                      ((512, 700, 121), "nearest: 672 or 704"),
                                      ((512, 768, 100), "num_frames=100 is not 8·k + 1"),
                                      ((512, 768, 0), "num_frames=0 must be a positive int"),
                                      ((512.0, 768, 121), "height=512.0"),
                                      ((1088, 1920, 257), "is sized for at most")])
def test_validate_resolution_errors(args, msg):
    with pytest.raises(ValueError) as e: validate_resolution(*args, ltx2_memory_profile(name="low", ram_gb=64))
    assert msg in str(e.value)


def test_validate_resolution_latent_sizes():
    assert validate_resolution(512, 768, 121) == (16, 16, 24)
    assert validate_resolution(1088, 1920, 257, ltx2_memory_profile(name="cpu_only", ram_gb=64)) == (33, 34, 60)
    assert validate_resolution(32, 32, 9, None, 2, 2) == (5, 16, 16)              # the tiny VAE's grid


# --- prompt-embedding files -------------------------------------------------------------------------------------
def test_prompt_embeds_file_round_trip(tmp_path):
    L = 32
    mask = torch.zeros(2, L, dtype=torch.long); mask[0, -20:] = 1; mask[1, -7:] = 1
    e = PromptEmbeds(torch.randn(2, L, 96) * mask[..., None], mask, torch.randn(2, L, 96) * mask[..., None], mask,
                     ["one", "two"], ["", ""])
    p = write_prompt_embeds(e, tmp_path / "e.safetensors", metadata={"model": "tiny"})
    back = read_prompt_embeds(p)
    for k in ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask"):
        torch.testing.assert_close(getattr(back, k), getattr(e, k), rtol=0, atol=0)
    assert back.prompts == ["one", "two"] and back.negative_prompts == ["", ""]
    assert p.stat().st_size < 2 * 96 * 32 * 4 * 2                            # trimmed to the valid tokens
    with pytest.raises(FileExistsError, match="overwrite=True"): write_prompt_embeds(e, p)
    write_prompt_embeds(e, p, overwrite=True)
    with pytest.raises(ValueError, match=".safetensors"): write_prompt_embeds(e, tmp_path / "e.pt")
    with pytest.raises(FileNotFoundError, match="save_prompt_embeds"): read_prompt_embeds(tmp_path / "none")
    r = e.repeat(3)
    assert r.prompt_embeds.shape[0] == 6 and torch.equal(r.prompt_embeds[2], e.prompt_embeds[0])


# --- a tiny pipeline folder -------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
from diffuse_nb.ltx2 import txt2vid_ltx2  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return lp.tiny_ltx2_pipeline(tmp_path_factory.mktemp("ltx2") / "tiny")[1]


def test_index_geometry_and_lazy_loading(folder):
    assert read_ltx2_index(folder)["text_encoder"] == "Gemma3ForConditionalGeneration"
    assert "text_encoder" not in read_ltx2_index(folder, "precomputed")
    pipe = load_ltx2_pipeline(folder, memory_profile=ltx2_memory_profile(name="cpu_only", gpu="cpu", ram_gb=64))
    g = pipe.geometry
    assert (g.spatial_ratio, g.temporal_ratio, g.latent_channels, g.num_layers, g.text_width) == (2, 2, 4, 2, 96)
    assert g.audio_latents_per_second == 25 and g.sample_rate == 16000
    assert pipe.manager.components == {} and pipe.transformer is None                   # nothing read yet
    pipe.load("vae")
    assert pipe.vae is not None and "vae" in pipe.manager.components
    pipe.free("vae")
    assert pipe.vae is None and pipe.manager.components == {}
    with pytest.raises(ValueError, match="not part of this pipeline"):
        load_ltx2_pipeline(folder, pipe.profile, text_backend="random").load("text_encoder")


def test_folder_errors(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"): read_ltx2_index(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline"): read_ltx2_index(tmp_path)
    with pytest.raises(ValueError, match="text_backend='t5'"): read_ltx2_index(folder, "t5")


SIZE = dict(height=32, width=32, num_frames=5, num_inference_steps=2, max_sequence_length=32,
            spatio_temporal_guidance_blocks=(1,), guidance_rescale=0.7)


def test_every_profile_forced_on_cpu_reproduces_cpu_only(folder):
    make = lambda p: txt2vid_ltx2("a red ball", folder, negative_prompt="blurry", seed=1, memory_profile=p,
                                  progress=False, **SIZE)
    base = make(ltx2_memory_profile(name="cpu_only", gpu="cpu", ram_gb=128))
    for name, ram in (("high", 128), ("medium", 4), ("low", 128), ("very_low", 4)):   # 4: weights streamed
        p = ltx2_memory_profile(name=name, gpu="cpu", ram_gb=ram)           # (the notebook runs both sizes)
        r = make(p)
        assert r.metadata["profile"] == name and p.pin_memory == (ram == 128)
        assert (r.latents - base.latents).abs().max() < 1e-4, (name, ram)
        assert (r.audio_latents - base.audio_latents).abs().max() < 1e-4, (name, ram)
        assert np.abs(r.frames.astype(int) - base.frames).max() <= 1, (name, ram)
        assert (r.waveform - base.waveform).abs().max() < 1e-3, (name, ram)


def test_profile_machinery_runs(folder):
    p = ltx2_memory_profile(name="low", gpu="cpu", ram_gb=4)
    pipe = load_ltx2_pipeline(folder, memory_profile=p)
    txt2vid_ltx2("a red ball", pipe, seed=1, progress=False, **SIZE)
    assert type(pipe.manager.offloaders["transformer"]).__name__ == "DiTOffloader"
    assert pipe.text_encoder is None                                          # freed after encoding
    assert [r.label for r in pipe.manager.records] == ["encode_prompt", "connectors", "denoise", "decode",
                                                       "decode_audio"]
