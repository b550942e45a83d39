"`img2vid_ltx2` against diffusers' `LTX2ImageToVideoPipeline` on a tiny folder; image reading and bad input."
import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from diffuse_nb.ltx2_img2vid import img2vid_ltx2, preprocess_image, read_image  # noqa: E402
from diffuse_nb.ltx2_pipeline import load_ltx2_pipeline, ltx2_memory_profile, tiny_ltx2_pipeline  # noqa: E402

NO_GUIDANCE = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0,
                   audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                   audio_guidance_rescale=0.0)
SIZE = dict(height=32, width=32, num_frames=9, num_inference_steps=2, max_sequence_length=32)
CPU = ltx2_memory_profile(name="cpu_only", gpu="cpu", ram_gb=64)
y, x = np.mgrid[0:48, 0:40]
PICTURE = Image.fromarray(np.stack([128 + 100 * np.sin(x / 5), 128 + 100 * np.cos(y / 4),
                                    128 + 80 * np.sin((x + y) / 6)], -1).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref, folder = tiny_ltx2_pipeline(tmp_path_factory.mktemp("ltx2") / "tiny", image_to_video=True)
    return ref, folder, load_ltx2_pipeline(folder, memory_profile=CPU)


@pytest.mark.parametrize("crf", [0, 33])
@pytest.mark.parametrize("guidance", ["off", "on"])
def test_img2vid_matches_ltx2_image_to_video(tiny, crf, guidance):
    ref, _, pipe = tiny
    kw = NO_GUIDANCE if guidance == "off" else {}
    r = ref(image=PICTURE, prompt="a red ball", negative_prompt="blurry", image_crf=crf, output_type="np",
            generator=torch.Generator().manual_seed(0), spatio_temporal_guidance_blocks=[1], **SIZE, **kw)
    o = img2vid_ltx2(PICTURE, "a red ball", pipe, negative_prompt="blurry", image_crf=crf, seed=0,
                     spatio_temporal_guidance_blocks=(1,), progress=False, **SIZE, **kw)
    assert np.abs(o.frames[0].astype(np.float64) - r.frames[0] * 255).max() <= 1.0
    assert (o.waveform[0] - r.audio[0]).abs().max() <= 1e-3
    assert o.metadata["task"] == "img2vid" and o.metadata["image_crf"] == crf
    assert "encode_image" in o.metadata["phases"]


def test_image_inputs_are_read_alike(tmp_path):
    p = tmp_path / "p.png"; PICTURE.save(p)
    a = np.asarray(PICTURE)
    for src in (p, str(p), PICTURE, a, a / 255.0, torch.from_numpy(a.copy())):
        np.testing.assert_array_equal(np.asarray(read_image(src)), a)
    t = preprocess_image(PICTURE, 32, 64, image_crf=0)
    assert t.shape == (1, 3, 32, 64) and -1 <= t.min() and t.max() <= 1


def test_bad_images_fail_before_weights_load(tiny, tmp_path):
    _, folder, _ = tiny
    bad_file = tmp_path / "notes.png"; bad_file.write_text("not an image")
    pipe = load_ltx2_pipeline(folder, memory_profile=CPU)
    cases = [(tmp_path / "missing.png", {}, FileNotFoundError, "does not exist"),
             (bad_file, {}, ValueError, "could not be read as an image"),
             (np.zeros((32, 32)), {}, ValueError, "(height, width, 3)"),
             (np.full((8, 8, 3), 2.0), {}, ValueError, "floats in [0, 1]"),
             (12, {}, TypeError, "image must be a path"),
             (PICTURE, dict(image_crf=60), ValueError, "image_crf=60"),
             (PICTURE, dict(num_frames=8), ValueError, "num_frames=8")]
    for image, kw, exc, msg in cases:
        with pytest.raises(exc) as e: img2vid_ltx2(image, "x", pipe, progress=False, **{**SIZE, **kw})
        assert msg in str(e.value)
    assert pipe.manager.components == {}
