"`txt2vid_ltx2` against diffusers' `LTX2Pipeline` on a tiny folder; text backends, result object, bad input."
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffuse_nb.ltx2 import (LTX2Guidance, LTX2Result, apply_guidance, latents_to_video,  # noqa: E402
                             pack_video_latents, save_prompt_embeds, txt2vid_ltx2, unpack_video_latents)
from diffuse_nb.ltx2_pipeline import load_ltx2_pipeline, ltx2_memory_profile, tiny_ltx2_pipeline  # noqa: E402
from diffuse_nb.video_files import read_video_info  # noqa: E402

NO_GUIDANCE = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0,
                   audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                   audio_guidance_rescale=0.0)
ALL_ON = dict(spatio_temporal_guidance_blocks=[1])                 # diffusers' defaults: CFG 3/7, STG, modality 3,
SIZE = dict(height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=32)  # rescale 0.7
CPU = ltx2_memory_profile(name="cpu_only", gpu="cpu", ram_gb=64)
PROMPT, NEG = "a red ball bouncing", "blurry"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref, folder = tiny_ltx2_pipeline(tmp_path_factory.mktemp("ltx2") / "tiny")
    return ref, folder, load_ltx2_pipeline(folder, memory_profile=CPU)


def reference(ref, **kw):
    out = ref(PROMPT, negative_prompt=NEG, generator=torch.Generator().manual_seed(0), output_type="np",
              frame_rate=24.0, **{**SIZE, **kw})
    return out.frames[0], out.audio[0]


def ours(pipe, **kw):
    return txt2vid_ltx2(PROMPT, pipe, negative_prompt=NEG, seed=0, progress=False, **{**SIZE, **kw})


@pytest.mark.parametrize("name,kw", [("guidance off", NO_GUIDANCE), ("CFG+STG+modality+rescale", ALL_ON)])
def test_txt2vid_matches_ltx2pipeline(tiny, name, kw):
    ref, _, pipe = tiny
    frames, audio = reference(ref, **kw)
    r = ours(pipe, **kw)
    assert r.frames.shape == (1, 9, 32, 32, 3) and r.frames.dtype == np.uint8
    assert np.abs(r.frames[0].astype(np.float64) - frames * 255).max() <= 1.0          # within 1/255
    assert (r.waveform[0] - audio).abs().max() <= 1e-3
    assert r.sample_rate == 16000 and r.waveform.shape == (1, 2, audio.shape[-1])    # stereo, diffusers' length


def test_latents_match_and_round_trip(tiny):
    ref, _, pipe = tiny
    r = ours(pipe, return_latents=True, **ALL_ON)
    lat = ref(PROMPT, negative_prompt=NEG, generator=torch.Generator().manual_seed(0), output_type="latent",
              **SIZE, **ALL_ON)
    assert r.frames is None and r.waveform is None
    assert (r.latents - lat.frames).abs().max() < 1e-4 and (r.audio_latents - lat.audio).abs().max() < 1e-4
    full = ours(pipe, **ALL_ON)
    later = latents_to_video(r.latents, pipe, r.audio_latents, progress=False)
    assert np.abs(later.frames.astype(int) - full.frames).max() <= 1
    assert (later.waveform - full.waveform).abs().max() < 1e-4


def test_text_backends(tiny, tmp_path):
    _, folder, pipe = tiny
    gemma = ours(pipe, **ALL_ON)
    f = save_prompt_embeds(PROMPT, tmp_path / "p.safetensors", pipe, negative_prompt=NEG, max_sequence_length=32)
    light = load_ltx2_pipeline(folder, memory_profile=CPU, text_backend="precomputed")
    pre = txt2vid_ltx2(None, light, text_backend="precomputed", prompt_embeds=f, seed=0, progress=False,
                       **SIZE, **ALL_ON)
    np.testing.assert_array_equal(pre.frames, gemma.frames)
    assert torch.equal(pre.waveform, gemma.waveform)
    assert light.text_encoder is None and pre.metadata["prompt"] == PROMPT
    rnd = txt2vid_ltx2("x", light, text_backend="random", seed=0, progress=False, **SIZE, **ALL_ON)
    rnd2 = txt2vid_ltx2("x", light, text_backend="random", seed=0, progress=False, **SIZE, **ALL_ON)
    np.testing.assert_array_equal(rnd.frames, rnd2.frames)                               # seeded
    assert rnd.metadata["text_backend"] == "random" and np.abs(rnd.frames.astype(int) - gemma.frames).max() > 0
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_prompt_embeds(PROMPT, f, pipe, max_sequence_length=32)


def test_result_object_and_file(tiny, tmp_path):
    _, _, pipe = tiny
    seen = []
    r = ours(pipe, output_file=tmp_path / "v.mp4", callback=lambda i, n, z: seen.append((i, n, z.shape)),
             **NO_GUIDANCE)
    assert isinstance(r, LTX2Result) and "1 video(s) of 9 frames 32×32" in repr(r)
    assert seen == [(0, 2, torch.Size([1, 4, 5, 16, 16])), (1, 2, torch.Size([1, 4, 5, 16, 16]))]
    m = r.metadata
    assert (m["prompt"], m["seed"], m["num_inference_steps"], m["profile"], m["fps"]) == (PROMPT, 0, 2,
                                                                                         "cpu_only", 24.0)
    assert set(m["phases"]) == {"encode_prompt", "connectors", "denoise", "decode", "decode_audio"}
    info = read_video_info(tmp_path / "v.mp4")
    assert info["num_frames"] == 9 and info["audio_codec"] == "aac" and info["metadata"]["seed"] == 0
    assert abs(info["audio_seconds"] - r.waveform.shape[-1] / r.sample_rate) < 0.03
    with pytest.raises(FileExistsError, match="overwrite=True"): r.save(tmp_path / "v.mp4")
    assert r.save(tmp_path / "v.webm")[0].exists()


def test_guidance_arithmetic():
    g = LTX2Guidance()
    assert g.passes == ["cond", "uncond", "stg", "isolated"]
    assert LTX2Guidance(**NO_GUIDANCE).passes == ["cond"]
    assert LTX2Guidance(audio_guidance_scale=None).audio_guidance_scale == 3.0        # diffusers: audio or video
    c, u, s, i = (torch.randn(2, 10, 4, generator=torch.Generator().manual_seed(k)) for k in range(4))
    got = apply_guidance(c, u, s, i, 3.0, 1.0, 3.0, 0.0)
    torch.testing.assert_close(got, c + 2 * (c - u) + (c - s) + 2 * (c - i))
    r = apply_guidance(c, u, s, i, 3.0, 1.0, 3.0, 1.0)
    torch.testing.assert_close(r.std(dim=(1, 2)), c.std(dim=(1, 2)))                  # rescale 1: cond's std
    x = torch.randn(2, 4, 3, 5, 6)
    assert torch.equal(unpack_video_latents(pack_video_latents(x), 3, 5, 6), x)


BAD = [(dict(num_frames=10), ValueError, "num_frames=10 is not 2·k + 1"),
       (dict(width=48), ValueError, "width=48 is not a multiple of 32"),
       (dict(height=0), ValueError, "height=0"),
       (dict(fps=0), ValueError, "fps=0"),
       (dict(fps=-24.0), ValueError, "fps=-24.0"),
       (dict(num_inference_steps=0), ValueError, "num_inference_steps=0"),
       (dict(guidance_scale=-1.0), ValueError, "guidance_scale=-1.0"),
       (dict(guidance_rescale=1.5), ValueError, "guidance_rescale=1.5"),
       (dict(stg_scale=1.0, spatio_temporal_guidance_blocks=(28,)), ValueError, "blocks 0 to 1"),
       (dict(text_backend="clip"), ValueError, "text_backend='clip'"),
       (dict(output_format="avi"), ValueError, "output_format='avi'"),
       (dict(text_backend="precomputed"), ValueError, "needs prompt_embeds"),
       (dict(text_backend="precomputed", prompt_embeds="nowhere.safetensors"), FileNotFoundError, "does not exist"),
       (dict(max_sequence_length=30), ValueError, "multiple of the connectors' 8"),
       (dict(sigmas=[1.0, 2.0]), ValueError, "sigmas[i]=2.0"),
       (dict(seed="one"), TypeError, "seed must be"),
       (dict(callback=3), TypeError, "callback must be callable"),
       (dict(memory_profile="huge"), ValueError, "memory_profile='huge'"),
       (dict(prompt=7), TypeError, "prompt must be a str"),
       (dict(negative_prompt=["a", "b"]), ValueError, "negative_prompt has 2 entries"),
       (dict(initial_latents=torch.zeros(1, 4, 4, 16, 16)), ValueError, "initial_latents has shape")]


@pytest.mark.parametrize("kw,exc,msg", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_fails_before_weights_load(tiny, kw, exc, msg):
    _, folder, _ = tiny
    pipe = load_ltx2_pipeline(folder, memory_profile=CPU)
    kw = {"prompt": "a ball", "model": folder if "memory_profile" in kw else pipe, "progress": False,
          **SIZE, "spatio_temporal_guidance_blocks": (1,), **kw}
    with pytest.raises(exc) as e: txt2vid_ltx2(**kw)
    assert msg in str(e.value)
    assert pipe.manager.components == {}                                              # no weights were read


def test_existing_output_file_is_refused_first(tiny, tmp_path):
    _, _, pipe = tiny
    (tmp_path / "v.mp4").write_bytes(b"mine")
    fresh = load_ltx2_pipeline(tiny[1], memory_profile=CPU)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        txt2vid_ltx2("a", fresh, output_file=tmp_path / "v.mp4", progress=False, **SIZE, **NO_GUIDANCE)
    assert fresh.manager.components == {} and (tmp_path / "v.mp4").read_bytes() == b"mine"
