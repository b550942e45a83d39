"End-to-end parity of `diffuse_nb.sd` with diffusers' SD/SDXL pipelines (and img2img), profiles, bad input."
import dataclasses, inspect, json, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

warnings.filterwarnings("ignore", message=".*torchvision.*")
import diffuse_nb
from diffuse_nb import memory, sd, sd_cpu
from diffuse_nb.core import read_image_metadata

pytest.importorskip("diffusers")
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionXLImg2ImgPipeline)

# float32: a UNet call differs from diffusers' by up to ~2e-6; guidance (2g-1 = 14 at g=7.5) and DDIM's
# 1/sqrt(alpha_bar) amplify that to ~1.5e-4 on latents of magnitude ~15. In float64 the runs agree to 1e-12.
LAT_ATOL, IMG_ATOL = 2e-4, 1


def exact(kind: str, name: str = "cpu_only", **kw) -> memory.MemoryProfile:
    "A profile forced onto the CPU, without oneDNN prepacking (which changes float rounding) unless asked."
    prof = memory.resolve_profile(name, model_kind=kind, gpu="cpu")
    return dataclasses.replace(prof, **{"cpu_prepack": False, **kw})


@pytest.fixture(scope="module")
def tiny_sd():
    ref, path = sd.tiny_pipeline("sd")
    return ref, path, sd.load_pipeline(path, profile=exact("sd15"))


@pytest.fixture(scope="module")
def tiny_sdxl():
    ref, path = sd.tiny_pipeline("sdxl")
    return ref, path, sd.load_pipeline(path, profile=exact("sdxl"))


def pixels(images) -> np.ndarray: return np.stack([np.asarray(i, dtype=np.int16) for i in images])


def run_ref(ref, prompts, sched, **kw):
    "diffusers' images and final latents (caught by the step-end callback)."
    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[sched]
    ref.scheduler, box = cls.from_config(ref.scheduler.config), {}
    def grab(pipe, i, t, k): box["latents"] = k["latents"].clone(); return {}
    images = ref(prompts, callback_on_step_end=grab, **kw).images
    return images, box["latents"]


def check(ours, ref_images, ref_latents, lat_atol=LAT_ATOL):
    d_img = np.abs(pixels(ours.images) - pixels(ref_images)).max()
    d_lat = (ours.latents - ref_latents).abs().max().item()
    assert d_img <= IMG_ATOL and d_lat <= lat_atol, (d_img, d_lat)


# ---- txt2img parity: DDIM and Euler, guidance 1 and 7.5, negative prompts, batch > 1, non-square
CASES = [  # scheduler, guidance, prompts, negative, (h, w), images per prompt
    ("ddim", 7.5, "a red cube", None, (32, 32), 1),
    ("euler", 7.5, ["a red cube", "a blue ball"], ["blurry", "dark"], (32, 48), 1),
    ("ddim", 1.0, ["a", "b c"], None, (48, 32), 2),
    ("euler", 1.0, "a cat", None, (32, 32), 2),
    ("ddim", 7.5, ["x", "y"], ["no", "never"], (48, 32), 2),
]


@pytest.mark.parametrize("sched,g,prompts,neg,hw,n", CASES)
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_txt2img_parity(kind, sched, g, prompts, neg, hw, n, tiny_sd, tiny_sdxl):
    ref, _, pipe = tiny_sd if kind == "sd" else tiny_sdxl
    kw = dict(negative_prompt=neg, num_inference_steps=3, guidance_scale=g, height=hw[0], width=hw[1])
    gen = torch.Generator().manual_seed(7)
    ri, rl = run_ref(ref, prompts, sched, num_images_per_prompt=n, generator=gen, **kw)
    f = sd.txt2img if kind == "sd" else sd.txt2img_sdxl
    check(f(prompts, pipe, num_images=n, seed=7, scheduler=sched, progress=False, **kw), ri, rl)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_initial_latents_and_seed_lists(kind, tiny_sd, tiny_sdxl):
    ref, _, pipe = tiny_sd if kind == "sd" else tiny_sdxl
    kw = dict(num_inference_steps=2, guidance_scale=7.5, height=32, width=32)
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    ri, rl = run_ref(ref, ["a", "b"], "euler", latents=noise, **kw)
    ours = sd.txt2img(["a", "b"], pipe, initial_latents=noise, scheduler="euler", progress=False, **kw)
    check(ours, ri, rl)
    gens = [torch.Generator().manual_seed(s) for s in (4, 5)]        # one generator per image, as diffusers
    ri, rl = run_ref(ref, ["a", "b"], "ddim", generator=gens, **kw)
    check(sd.txt2img(["a", "b"], pipe, seed=[4, 5], progress=False, **kw), ri, rl)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_float64_parity(kind, tiny_sd, tiny_sdxl):
    "In float64 the pipeline agrees with diffusers to rounding: the float32 gap is the models' float error."
    ref, path, _ = tiny_sd if kind == "sd" else tiny_sdxl
    pipe = sd.load_pipeline(path, profile=exact("sd15" if kind == "sd" else "sdxl", cpu_dtype=torch.float64))
    ref.to(torch.float64)
    try:
        noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        kw = dict(negative_prompt=["x", "y"], num_inference_steps=3, guidance_scale=7.5, height=32, width=32)
        ri, rl = run_ref(ref, ["a red cube", "b"], "ddim", latents=noise, **kw)
        ours = sd.txt2img(["a red cube", "b"], pipe, initial_latents=noise, progress=False, **kw)
        assert ours.latents.dtype == torch.float64
        check(ours, ri, rl, lat_atol=1e-9)
    finally: ref.to(torch.float32)


# ---- img2img parity
IMG = Image.fromarray((np.random.RandomState(0).rand(48, 32, 3) * 255).astype(np.uint8))
I2I_CASES = [("ddim", 7.5, "a red cube", None, 1, 0.8), ("euler", 1.0, ["a", "b"], None, 2, 0.5),
             ("ddim", 7.5, ["a", "b"], ["u", "v"], 1, 1.0)]


@pytest.mark.parametrize("sched,g,prompts,neg,n,strength", I2I_CASES)
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_img2img_parity(kind, sched, g, prompts, neg, n, strength, tiny_sd, tiny_sdxl):
    ref, _, pipe = tiny_sd if kind == "sd" else tiny_sdxl
    i2i = (StableDiffusionImg2ImgPipeline(**ref.components) if kind == "sd" else
           StableDiffusionXLImg2ImgPipeline(**ref.components, requires_aesthetics_score=False,
                                            add_watermarker=False))
    i2i.set_progress_bar_config(disable=True)
    kw = dict(negative_prompt=neg, num_inference_steps=4, guidance_scale=g, strength=strength)
    ri, rl = run_ref(i2i, prompts, sched, image=IMG, num_images_per_prompt=n,
                     generator=torch.Generator().manual_seed(3), **kw)
    ours = sd.img2img(IMG, prompts, pipe, num_images=n, seed=3, scheduler=sched, progress=False, **kw)
    check(ours, ri, rl)


def test_img2img_inputs_agree(tiny_sd):
    "A path, a PIL image, a uint8 array, a float array and a [0, 1] tensor of one picture agree."
    _, path, pipe = tiny_sd
    f = path.parent / "input.png"; IMG.save(f)
    arr = np.array(IMG)
    inputs = [f, IMG, arr, arr.astype(np.float32) / 255, torch.from_numpy(arr).permute(2, 0, 1).float() / 255]
    outs = [sd.img2img(x, "a", pipe, num_inference_steps=2, seed=1, progress=False) for x in inputs]
    assert all(np.abs(pixels(o.images) - pixels(outs[0].images)).max() <= 1 for o in outs)


# ---- memory profiles, all forced onto the CPU
def test_sequential_cfg_equals_batched(tiny_sdxl):
    "One guided UNet call, as two half-batches, agrees with the batched call within 1e-5 (float32)."
    _, path, pipe = tiny_sdxl
    x, ctx, t = torch.randn(4, 4, 16, 16), torch.randn(4, 77, 64), torch.tensor(500)
    added = {"text_embeds": torch.randn(4, 32), "time_ids": torch.randn(4, 6)}
    seq = memory.sequential_cfg_forward(pipe.unet, x, t, ctx, added)
    assert (pipe.unet(x, t, ctx, added_cond_kwargs=added).sample - seq).abs().max() <= 1e-5


@pytest.mark.slow
def test_sequential_cfg_whole_runs(tiny_sdxl):
    "Whole generations with sequential and batched guidance: float32 noise apart, 1e-12 in float64."
    _, path, _ = tiny_sdxl
    kw = dict(negative_prompt=["x", "y"], num_inference_steps=3, height=32, width=32, seed=2, progress=False)
    for dt, atol in ((torch.float32, LAT_ATOL), (torch.float64, 1e-9)):
        pipes = [sd.load_pipeline(path, profile=exact("sdxl", cfg_mode=m, cpu_dtype=dt))
                 for m in ("batched", "sequential")]
        a, b = (sd.txt2img(["a", "b"], p, **kw) for p in pipes)
        assert (a.latents - b.latents).abs().max() <= atol


def profiles_reproduce_cpu_only(kind, fixture):
    "Each profile (offload hooks, block streaming, cleanup, tiling) gives the cpu_only image."
    _, path, pipe = fixture
    kw = dict(num_inference_steps=2, height=48, width=32, seed=9, progress=False)
    tiled = exact(kind, vae_tiling=True, vae_tile_size=16)                 # 16 px tiles: 48×32 pixels do tile
    base = {False: sd.txt2img("a red cube", pipe, **kw),
            True: sd.txt2img("a red cube", sd.load_pipeline(path, profile=tiled), **kw)}
    for name in memory.PROFILE_NAMES:
        prof = memory.resolve_profile(name, model_kind=kind, gpu="cpu")
        if prof.vae_tiling: prof = dataclasses.replace(prof, vae_tile_size=16)
        pipe = sd.load_pipeline(path, profile=prof)
        out = sd.txt2img("a red cube", pipe, **kw)
        assert set(out.metadata["phases"]) == {"encode", "denoise", "decode"}
        ref = base[prof.vae_tiling]
        assert np.abs(pixels(out.images) - pixels(ref.images)).max() <= 1, name
        assert (out.latents - ref.latents).abs().max() <= LAT_ATOL, name
        pipe.manager.close()


def test_every_profile_reproduces_cpu_only(tiny_sd): profiles_reproduce_cpu_only("sd15", tiny_sd)


@pytest.mark.slow
def test_every_profile_reproduces_cpu_only_sdxl(tiny_sdxl):
    profiles_reproduce_cpu_only("sdxl", tiny_sdxl)


def test_auto_profile(tiny_sd, monkeypatch):
    _, path, _ = tiny_sd
    monkeypatch.setattr(memory, "vram_info", lambda device=None: (0.0, 0.0))   # no GPU: auto is cpu_only
    assert sd.load_pipeline(path).profile.name == "cpu_only"
    for kind in ("sd15", "sd21", "sdxl"):     # injected VRAM readings on each side of every threshold
        ladder = sorted(memory.profile_thresholds(kind).items(), key=lambda kv: kv[1])   # cpu_only first
        for (below, _), (name, gb) in zip(ladder, ladder[1:]):
            assert memory.resolve_profile("auto", kind, vram_gb=gb, gpu="cpu").name == name
            assert memory.resolve_profile("auto", kind, vram_gb=gb - 0.01, gpu="cpu").name == below


def test_kind_detection(tmp_path):
    _, p15 = sd.tiny_pipeline("sd", tmp_path / "a")
    _, p21 = sd.tiny_pipeline("sd", tmp_path / "b", text_act="gelu", prediction_type="v_prediction")
    assert sd.load_pipeline(p15, "cpu_only").kind == "sd15"
    pipe = sd.load_pipeline(p21, "cpu_only")
    assert pipe.kind == "sd21" and pipe.scheduler.config.prediction_type == "v_prediction"
    out = sd.txt2img_sd21("a", pipe, num_inference_steps=2, height=32, width=32, seed=0, progress=False)
    assert out.metadata["kind"] == "sd21"
    with pytest.raises(ValueError, match="needs a sdxl model"): sd.txt2img_sdxl("a", pipe)


# ---- result, saving, callback, reuse
def test_result_save_and_metadata(tiny_sd, tmp_path):
    _, _, pipe = tiny_sd
    calls = []
    out = sd.txt2img(["a", "b"], pipe, num_inference_steps=3, height=32, width=32, seed=11, progress=False,
                     callback=lambda i, n, lat: calls.append((i, n, tuple(lat.shape))),
                     filename=tmp_path / "x.png")
    assert calls == [(i, 3, (2, 4, 16, 16)) for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_0.png", "x_1.png"]
    meta = read_image_metadata(tmp_path / "x_1.png")
    assert meta["prompt"] == "b" and meta["seed"] == "11" and meta["profile"] == "cpu_only"
    assert set(json.loads(meta["phases"])) == {"encode", "denoise", "decode"}
    with pytest.raises(FileExistsError, match="overwrite=True"): out.save(tmp_path / "x.png")
    with pytest.raises(FileExistsError, match="overwrite=True"):     # refused before anything runs
        sd.txt2img(["a", "b"], pipe, filename=tmp_path / "x.png", progress=False)
    assert len(out.save(tmp_path / "x.png", overwrite=True)) == 2
    assert len(out.save(tmp_path / "dir")) == 2 and len(list((tmp_path / "dir").iterdir())) == 2


def test_reuse_is_deterministic(tiny_sd, monkeypatch):
    "Generating twice (weights handed back to the OS in between) gives the same latents; a new seed differs."
    _, path, _ = tiny_sd
    monkeypatch.setattr(sd_cpu, "RELEASE_MIN_BYTES", 0)
    pipe = sd.load_pipeline(path, profile=exact("sd15"))
    assert sd.release_mapped_weights(pipe.unet) > 0                 # the weights are memory-mapped and clean
    kw = dict(num_inference_steps=2, height=32, width=32, progress=False)
    a, b, c = (sd.txt2img("a", pipe, seed=s, **kw) for s in (1, 1, 2))
    assert torch.equal(a.latents, b.latents) and not torch.equal(a.latents, c.latents)
    bias = pipe.unet.conv_in.bias.detach().clone()
    with torch.no_grad(): pipe.unet.conv_in.bias.add_(1.0)            # a written page: its mapping is kept
    assert sd.release_mapped_weights(pipe.unet) == 0 and torch.equal(pipe.unet.conv_in.bias, bias + 1)


def test_release_after_packing(tiny_sd, monkeypatch):
    "Convs packed on first use hand their plain weight's pages back, once; the picture does not change."
    _, path, pipe = tiny_sd
    monkeypatch.setattr(sd_cpu, "RELEASE_MIN_BYTES", 0)
    packed = sd.load_pipeline(path, profile="cpu_only")
    hooked = [m for m in packed.unet.modules() if "_release_hook" in m.__dict__]
    assert hooked and all(m.weight.numel() for m in hooked)
    kw = dict(num_inference_steps=2, height=32, width=32, seed=5, progress=False)
    a, b = sd.txt2img("a", packed, **kw), sd.txt2img("a", pipe, **kw)
    assert all(m._release_hook.id not in m._forward_hooks and "_packed_weight" in m.__dict__ for m in hooked)
    assert np.abs(pixels(a.images) - pixels(b.images)).max() <= 1


# ---- bad input: clear errors before any weights load
BAD = [
    (dict(height=34), ValueError, "height=34 is not a multiple of 4"),
    (dict(width=30), ValueError, "width=30 is not a multiple of 4"),
    (dict(guidance_scale=-1), ValueError, "guidance_scale=-1"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps=0"),
    (dict(num_inference_steps=2.5), ValueError, "num_inference_steps=2.5"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed="42"), TypeError, "seed must be an int"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), ValueError, "negative_prompt has 1 entries"),
    (dict(prompt=3), TypeError, "prompt must be a str"),
    (dict(scheduler="eulr"), ValueError, "scheduler='eulr' is not a scheduler name"),
    (dict(profile="fast"), ValueError, "profile='fast'"),
    (dict(devices={"unet": "cuda:7"}), ValueError, "cuda:7"),
    (dict(devices={"unet": "tpu"}), ValueError, "tpu"),
    (dict(num_images=0), ValueError, "num_images=0"),
    (dict(initial_latents=torch.zeros(1, 4, 8, 8)), ValueError, "initial_latents has shape (1, 4, 8, 8)"),
    (dict(callback=3), TypeError, "callback must be callable"),
]
BAD_I2I = [
    (dict(strength=0.0), ValueError, "strength=0.0"),
    (dict(strength=1.5), ValueError, "strength=1.5"),
    (dict(strength=0.1, num_inference_steps=5), ValueError, "leaves no denoising step"),
    (dict(input_image="no/such.png"), FileNotFoundError, "does not exist"),
    (dict(input_image=Image.new("I;16", (32, 32))), ValueError, "mode 'I;16'"),
    (dict(input_image=Image.new("CMYK", (32, 32))), ValueError, "mode 'CMYK'"),
    (dict(input_image=np.zeros((32, 32, 4), np.uint8)), ValueError, "is not an RGB image"),
    (dict(input_image=np.full((32, 32, 3), 2.0)), ValueError, "floats must be in [0, 1]"),
    (dict(input_image=[IMG, IMG, IMG], prompt=["a", "b"]), ValueError, "3 input images cannot be spread"),
]


@pytest.fixture
def no_weights(monkeypatch):
    "Make any weight loading fail loudly: the errors below must come before it."
    def boom(*a, **k): raise AssertionError("weights were loaded before the bad input was caught")
    monkeypatch.setattr(sd, "load_pipeline", boom)


@pytest.mark.parametrize("kw,exc,msg", BAD, ids=[m for *_, m in BAD])
def test_bad_txt2img_input(kw, exc, msg, tiny_sd, no_weights):
    with pytest.raises(exc) as e: sd.txt2img(model=tiny_sd[1], **{"prompt": "a", **kw})
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize("kw,exc,msg", BAD_I2I, ids=[m for *_, m in BAD_I2I])
def test_bad_img2img_input(kw, exc, msg, tiny_sd, no_weights):
    with pytest.raises(exc) as e: sd.img2img(model=tiny_sd[1], **{"input_image": IMG, "prompt": "a", **kw})
    assert msg in str(e.value), str(e.value)


def test_unreadable_image(tiny_sd, tmp_path, no_weights):
    bad = tmp_path / "broken.png"; bad.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="could not be read as an image"): sd.img2img(bad, "a", tiny_sd[1])


def test_bad_folders(tiny_sd, tmp_path):
    _, path, _ = tiny_sd
    with pytest.raises(FileNotFoundError, match="has no model_index.json"): sd.load_pipeline(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub repo id"):
        sd.load_pipeline("./nowhere")
    broken = tmp_path / "broken"; broken.mkdir()
    (broken / "model_index.json").write_text((path / "model_index.json").read_text())
    with pytest.raises(FileNotFoundError, match="lacks the component folder"): sd.load_pipeline(broken)
    idx = json.loads((path / "model_index.json").read_text())
    idx["_class_name"] = "StableDiffusionUpscalePipeline"
    (broken / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="supported"): sd.load_pipeline(broken)
    with pytest.raises(ValueError, match="cuda"): sd.load_pipeline(path, profile="full_gpu")   # no GPU here


# ---- model names
def test_model_aliases(tiny_sd, monkeypatch, tmp_path):
    assert sd.MICRO_PATH == Path(diffuse_nb.__file__).parent / "assets" / "micro"
    assert sd.MODEL_ALIASES["micro"] == sd.MICRO_PATH and sd.MODEL_ALIASES["sd21"] == sd.DEFAULT_MODEL
    assert sd.MODEL_ALIASES["sdxl"] == sd.DEFAULT_SDXL_MODEL
    assert {"sd15", "sd21-base"} <= set(sd.MODEL_ALIASES) and sd.resolve_model("a/b") == "a/b"
    for f in (sd.txt2img, sd.img2img, sd.load_pipeline):
        assert inspect.signature(f).parameters["model" if f is not sd.load_pipeline else "path_or_repo_id"
                                               ].default == "micro"
    assert inspect.signature(sd.txt2img_sdxl).parameters["model"].default == sd.DEFAULT_SDXL_MODEL
    monkeypatch.setitem(sd.MODEL_ALIASES, "micro", tmp_path)            # the folder is there but empty
    with pytest.raises(FileNotFoundError, match="names the folder .* which is missing"): sd.txt2img("a")
    with pytest.raises(FileNotFoundError, match="which is missing"): sd.load_pipeline()
    monkeypatch.setitem(sd.MODEL_ALIASES, "micro", tiny_sd[1])          # a pipeline there: the default works
    out = sd.txt2img("a", num_inference_steps=1, height=32, width=32, seed=0, profile="cpu_only",
                     progress=False)
    assert out.metadata["model"] == "micro" and out.images[0].size == (32, 32)
    assert sd.read_pipeline_index("micro")[0] == "sd"


def test_skip_init_restores_torch_init(tiny_sd):
    "Loading does not run torch.nn.init's random fills, and leaves them as they were."
    from diffuse_nb import weights
    before = {n: getattr(torch.nn.init, n) for n in weights._INIT_FILLS}
    with pytest.raises(RuntimeError):
        with weights.skip_init():
            x = torch.ones(3); assert torch.nn.init.normal_(x) is x and torch.equal(x, torch.ones(3))
            raise RuntimeError("inside")
    assert all(getattr(torch.nn.init, n) is f for n, f in before.items())
    sd.load_pipeline(tiny_sd[1], profile="cpu_only")
    assert all(getattr(torch.nn.init, n) is f for n, f in before.items())


def test_reuse_freed_memory_keeps_pages_and_nests():
    import subprocess, sys
    from diffuse_nb import sd_cpu
    if sd_cpu._glibc() is None: pytest.skip("mallopt is glibc's")
    # page faults are counted in a fresh process: this one's heap, fragmented by earlier tests, would blur them
    script = """
import json, resource, torch
from diffuse_nb import sd_cpu
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10): torch.ones(64 << 18)                             # 64 MiB each, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
outside = faults()
with sd_cpu.reuse_freed_memory():
    with sd_cpu.reuse_freed_memory(): pass                              # an inner exit restores nothing
    depth, inside = sd_cpu._reuse_depth, faults()
print(json.dumps(dict(outside=outside, inside=inside, depth=depth, after=sd_cpu._reuse_depth)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["depth"] == 1 and r["after"] == 0, r
    assert r["outside"] > 0 and r["inside"] < 0.5 * r["outside"], r             # pages reused, not faulted in anew
    with sd_cpu.reuse_freed_memory(enabled=False): assert sd_cpu._reuse_depth == 0


def test_cpu_generation_keeps_freed_memory_from_the_first_step(tiny_sd):
    from diffuse_nb import sd_cpu
    if sd_cpu._glibc() is None: pytest.skip("mallopt is glibc's")
    pipe, depths = sd.load_pipeline(tiny_sd[1], profile="cpu_only"), []
    for m in (pipe.unet, pipe.vae.decoder):
        m.register_forward_pre_hook(lambda mod, args: depths.append(sd_cpu._reuse_depth))
    sd.txt2img("a red cube", pipe, num_inference_steps=3, height=32, width=32, seed=0, progress=False)
    assert depths == [1, 1, 1, 1] and sd_cpu._reuse_depth == 0, depths   # 3 UNet calls and the decode; off after
