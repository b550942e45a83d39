"The widget demos: set widget values, press Generate (the button's own handlers), check what appears."
import datetime, io, re

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse_nb import demo, sd

pytest.importorskip("diffusers")                          # the tiny pipeline is built with diffusers


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    "A tiny random SD pipeline folder (64×64 default, sizes multiples of 4, DDIM)."
    return str(sd.tiny_pipeline("sd", path=tmp_path_factory.mktemp("model") / "tiny_sd")[1])


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not PNG bytes"
    return Image.open(io.BytesIO(data))


def text(html: str) -> str: return re.sub("<[^>]+>", " ", html)


# ---- model names and sizes
def test_resolve_model_and_parse_size(model):
    assert demo.resolve_model(model) == sd.Path(model)
    assert demo.resolve_model("owner/some-model") == "owner/some-model"
    assert str(demo.resolve_model("sdxl")) == str(demo.MODEL_ALIASES["sdxl"])
    with pytest.raises(ValueError, match="model='mikro' is not allowed"): demo.resolve_model("mikro")
    with pytest.raises(TypeError, match="model must be"): demo.resolve_model(3)
    assert demo.parse_size("96x64") == (64, 96) and demo.parse_size(48) == (48, 48) and demo.parse_size("") is None
    for bad in ("64x", "0", "x", "-3", 1.5):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"): demo.parse_size(bad)


def test_get_pipeline_is_shared(model):
    a = demo.get_pipeline(model, "cpu_only")
    assert demo.get_pipeline(model, "cpu_only") is a
    assert demo.get_pipeline(model, "auto") is not a                     # another profile: loaded again


# ---- prompt -> image
def test_txt2img_app_generate_button(model):
    app = demo.Txt2ImgApp(model, steps=3)
    app.prompt.value, app.negative.value, app.seed.value = "a red circle", "blurry", 7
    app.guidance.value, app.scheduler.value, app.size.value = 5.0, "euler", "48x32"
    app.button.click()                                                   # the handlers a browser click calls
    assert app.error is None, app.error
    res = app.result
    assert png(app.image.value).size == (48, 32)
    assert (app.progress.value, app.progress.max, app.button.disabled) == (3, 3, False)
    m = res.metadata
    assert (m["prompt"], m["negative_prompt"], m["seed"], m["num_inference_steps"], m["guidance_scale"],
            m["scheduler"]) == ("a red circle", "blurry", 7, 3, 5.0, "euler")
    shown = text(app.info.value)
    for v in ("a red circle", "blurry", "euler", "48"): assert v in shown
    assert "dnb-settings" in app.info.value
    again = demo.Txt2ImgApp(model, steps=3, seed=7, prompt="a red circle", guidance=5.0, scheduler="euler",
                            size="48x32")
    again.negative.value = "blurry"
    res2 = again.generate()                                              # same settings -> same picture
    assert np.array_equal(np.asarray(res.images[0]), np.asarray(res2.images[0]))


def test_txt2img_app_preview_and_defaults(model):
    app = demo.Txt2ImgApp(model, steps=2)
    res = app.generate()
    assert res is not None and app.error is None
    assert res.images[0].size == (64, 64)                                 # the model's default size
    assert res.metadata["scheduler"] != "default"
    assert len(app.preview.value) > 0 and png(app.preview.value).size == (64, 64)   # x̂₀ shown while denoising


def test_txt2img_app_reports_errors(model):
    app = demo.Txt2ImgApp(model, steps=2)
    app.size.value = "63"                                                # not a multiple of 4
    assert app.generate() is None
    assert isinstance(app.error, ValueError) and "dnb-error" in app.info.value and "63" in text(app.info.value)
    assert app.button.disabled is False and app.image.value == b""
    app.size.value, app.scheduler.value = "", "flow_euler"                # another family than the model's
    assert app.generate() is None and "flow_euler" in text(app.info.value)
    app.scheduler.value = "default"
    assert app.generate() is not None and app.error is None               # and it recovers


# ---- image -> image
def test_img2img_app(model, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src)
    app = demo.Img2ImgApp(model, strength=0.5, steps=4, seed=1)
    assert app.generate() is None and "no input image" in text(app.info.value)
    app.set_input(src)                                                   # as a browser upload arrives
    assert png(app.input_view.value).size == (56, 40)
    app.button.click()
    assert app.error is None, app.error
    m = app.result.metadata
    assert (m["task"], m["strength"], m["seed"]) == ("img2img", 0.5, 1)
    assert app.progress.value == 2                                       # strength 0.5 of 4 steps
    assert png(app.image.value).size == (56, 40) and "strength" in text(app.info.value)
    app.upload.value = [dict(name="broken.png", type="image/png", size=3, content=memoryview(b"abc"),
                             last_modified=datetime.datetime.now())]
    assert app.generate() is None and "could not be read" in text(app.info.value)


# ---- scheduler and memory explorers
def test_scheduler_explorer():
    ex = demo.SchedulerExplorer(names=("ddim", "flow_euler"), steps=4)
    first = ex.plot.value
    assert png(first).size[0] > 300
    ex.steps.value = 6                                                   # the slider redraws
    assert ex.plot.value != first
    ts, sig = demo.sampler_schedule("euler", 5)
    assert len(ts) == 5 and np.all(np.diff(sig) < 0)
    assert abs(demo.toy_error(demo.toy_samples("ddim", 4)) - 0.120) < 1e-3
    with pytest.raises(ValueError, match="allowed"): demo.sampler_schedule("heun", 5)


def test_memory_explorer():
    mem = demo.MemoryExplorer(vram_gb=8, model_kind="sdxl")
    assert mem.choice["profile"] == "gpu_poor" and "auto → gpu_poor" in mem.info.value
    mem.kind.value = "sd21"
    assert mem.choice["profile"] == "full_gpu"
    mem.vram.value = 0.0
    assert mem.choice["profile"] == "cpu_only" and "no VRAM used" in mem.info.value
    assert mem.info.value.count("<tr") >= 6                               # the placement table, all profiles
    with pytest.raises(ValueError, match="model_kind"): demo.profile_choice("sd3", 8)
