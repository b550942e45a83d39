"The micro model: drawn data set and captions, the automatic judge, smoke training, the shipped folder, diffusers."
import json, random, warnings
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from diffuse_nb import micro
from diffuse_nb.micro import (SHAPES, COLOURS, ShapeSpec, all_triples, heldout_triples, train_triples, make_dataset,
                              draw_shape, caption, random_caption, analyse_image, check_image, score_images)

warnings.filterwarnings("ignore", message=".*torchvision.*")


# ---- data set and captions
def test_triples_split():
    held, train = heldout_triples(), train_triples()
    assert len(all_triples()) == 3 * 8 * 7 and len(held) == 24 and len(train) == 144
    assert not set(held) & set(train)
    assert Counter(s for s, _, _ in held) == {s: 8 for s in SHAPES}
    for i, j in ((0, 1), (0, 2), (1, 2)):          # every pair of a held-out triple is seen in training
        assert {(h[i], h[j]) for h in held} <= {(t[i], t[j]) for t in train}


def test_dataset_deterministic():
    a, specs = make_dataset(12, seed=3)
    b, specs_b = make_dataset(12, seed=3)
    assert a.shape == (12, 3, 64, 64) and a.dtype == torch.uint8 and torch.equal(a, b) and specs == specs_b
    assert not torch.equal(a, make_dataset(12, seed=4)[0])
    assert all(s.triple in set(train_triples()) for s in specs)
    assert all(s.triple in set(heldout_triples()) for s in make_dataset(12, split="heldout")[1])
    for s in specs:                                 # the shape keeps 3 pixels off the border
        assert s.side / 2 + 3 <= s.cx <= 64 - s.side / 2 - 3 and s.side / 2 + 3 <= s.cy <= 64 - s.side / 2 - 3


def test_captions():
    s = ShapeSpec("triangle", "blue", "yellow", "small", "top left")
    assert caption(s) == "a blue triangle on a yellow background"
    assert caption(s, size=True, position=True) == "a small blue triangle on a yellow background, top left"
    assert caption(s, background=False) == "a blue triangle"
    texts = {random_caption(s, random.Random(i)) for i in range(60)}
    assert len(texts) == 8 and all(t.startswith("a ") and "blue triangle" in t for t in texts)


def test_bad_input():
    with pytest.raises(ValueError, match="split='test'"): make_dataset(2, split="test")
    with pytest.raises(ValueError, match="n=0"): make_dataset(0)
    with pytest.raises(ValueError, match="'star'"): draw_shape(ShapeSpec("star", "red", "blue"))
    with pytest.raises(ValueError, match="uint8"): analyse_image(np.zeros((64, 64, 3), np.float32))


# ---- the automatic judge
def test_judge_recognises_drawings():
    rng = random.Random(7)
    specs = [micro.random_spec(rng, all_triples()) for _ in range(300)]
    images = [draw_shape(s) for s in specs]
    assert score_images(images, specs) == dict(colour=1.0, shape=1.0, background=1.0, all=1.0)
    tensors = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images[:20]])
    assert score_images(tensors, specs[:20])["all"] == 1.0     # (3, H, W) uint8 tensors work too


def test_judge_rejects_wrong():
    images, specs = make_dataset(60, seed=5)
    for field, names in (("shape", SHAPES), ("colour", list(COLOURS)), ("background", list(COLOURS))):
        wrong = [replace(s, **{field: next(n for n in names if n not in (getattr(s, field), s.colour, s.background))})
                 for s in specs]
        assert score_images(images, wrong)[field] == 0.0 and score_images(images, wrong)["all"] == 0.0
    flat = np.full((64, 64, 3), 30, np.uint8)
    assert analyse_image(flat) == dict(background="black", colour="unknown", shape="unknown", objects=0)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert analyse_image(noise)["shape"] == "unknown"
    a, b = ShapeSpec("square", "red", "white", cx=18, side=20), ShapeSpec("square", "red", "white", cx=46, side=20)
    two = np.minimum(np.asarray(draw_shape(a)), np.asarray(draw_shape(b)))   # two red squares
    assert analyse_image(two)["objects"] == 2 and not check_image(two, a)["shape"]
    bar = Image.new("RGB", (64, 64), "white"); ImageDraw.Draw(bar).rectangle([10, 25, 54, 38], fill="red")
    assert analyse_image(bar)["shape"] == "unknown"                   # a long bar: none of our shapes


# ---- training: a few steps lower the loss
@pytest.fixture(scope="module")
def models():
    return micro.micro_models(seed=0)


def test_schedule_and_loss_weights():
    "Zero terminal SNR: the last timestep holds no signal, and its v-loss keeps full weight; diffusers agrees."
    sched = micro.DDIMScheduler(**micro.MICRO_SCHEDULER)
    ac = sched.alphas_cumprod.float()
    assert float(ac[-1]) == 0.0 and sched.config.prediction_type == "v_prediction"
    w = micro.min_snr_weight(ac, torch.tensor([0, 500, 999]))
    assert float(w[2]) == 1.0 and 0 < float(w[0]) < float(w[1]) <= 1.0
    w_eps = micro.min_snr_weight(ac, torch.tensor([0, 500]), prediction_type="epsilon")
    assert torch.all(w_eps <= 1.0)
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        micro.min_snr_weight(ac, torch.tensor([1]), prediction_type="x0")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(**micro.MICRO_SCHEDULER)
    torch.testing.assert_close(ac, ref.alphas_cumprod.float(), atol=1e-6, rtol=0)
    sched.set_timesteps(25); ref.set_timesteps(25)
    assert sched.timesteps.tolist() == ref.timesteps.tolist() and int(sched.timesteps[0]) == 999


def test_vae_steps_lower_loss(models):
    vae = micro.micro_models(seed=1)["vae"]
    x = micro.to_unit(make_dataset(4, seed=1)[0])
    opt, g = torch.optim.Adam(vae.parameters(), 2e-3), torch.Generator().manual_seed(0)
    losses = [micro.vae_step(vae, x, opt, g) for _ in range(12)]
    assert losses[-1] < 0.8 * losses[0], losses


def test_unet_steps_lower_loss():
    m = micro.micro_models(seed=2)
    images, specs = make_dataset(8, seed=1)
    latents = micro.encode_images(m["vae"], images)
    latents = latents * micro.set_scaling_factor(m["vae"], latents)
    ac = m["scheduler"].alphas_cumprod.float()
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 1000, (8,), generator=g), torch.randn(latents.shape, generator=g)
    ids = m["tokenizer"]([caption(s) for s in specs], padding="max_length", max_length=77, return_tensors="pt").input_ids
    loss = lambda: float(micro.unet_loss(m["unet"], m["text_encoder"], latents, ids, t, noise, ac).detach())
    before = loss()
    ema, log = micro.train_unet(m["unet"], m["text_encoder"], m["tokenizer"], latents, specs, steps=15, batch_size=8,
                                lr=2e-3, log_every=1)
    assert len(log) == 15 and set(ema) == {"unet", "text_encoder"}
    assert loss() < 0.9 * before, (before, loss())


def test_train_micro_smoke(tmp_path):
    log = micro.train_micro(tmp_path / "m", n_images=32, vae_steps=2, unet_steps=2, n_val=8, n_eval_seeds=0,
                            vae_kw=dict(batch_size=2, check_every=2), unet_kw=dict(batch_size=2))
    assert set(log["timing"]) == {"draw", "vae", "encode", "unet", "total"} and "check" in log["vae"][-1]
    assert json.loads((tmp_path / "m" / "training_log.json").read_text())["unet_steps"] == 2
    with pytest.raises(FileExistsError, match="overwrite=True"): micro.train_micro(tmp_path / "m")
    m = micro.load_micro(tmp_path / "m")
    assert m["vae"].config.scaling_factor == log["scaling_factor"]
    assert micro.generate(m, ["a red circle"], [0], num_inference_steps=2).shape == (1, 3, 64, 64)
    # a second run that keeps this autoencoder: same VAE weights, its log and time carried over
    log2 = micro.train_micro(tmp_path / "m2", n_images=16, unet_steps=1, n_val=8, n_eval_seeds=0,
                             unet_kw=dict(batch_size=2), vae_from=tmp_path / "m")
    m2 = micro.load_micro(tmp_path / "m2")
    for (k, a), b in zip(m["vae"].state_dict().items(), m2["vae"].state_dict().values()): assert torch.equal(a, b), k
    assert log2["vae"] == log["vae"] and log2["timing"]["vae"] == log["timing"]["vae"]
    assert log2["vae_kw"]["vae_from"] == str(tmp_path / "m") and log2["timing"]["total"]["vae_carried"]
    with pytest.raises(FileNotFoundError, match="vae_from"): micro.train_micro(tmp_path / "m3", vae_from=tmp_path)


# ---- the shipped folder
@pytest.fixture(scope="module")
def shipped():
    if not (micro.MICRO_PATH / "model_index.json").is_file(): pytest.skip("the micro model is not in this checkout")
    return micro.load_micro()


def test_shipped_folder(shipped):
    p = micro.MICRO_PATH
    index = json.loads((p / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    assert size <= 25e6, size
    from safetensors import safe_open
    for k in ("text_encoder", "unet", "vae"):
        f = next((p / k).glob("*.safetensors"))
        with safe_open(f, "pt") as st: assert {st.get_slice(n).get_dtype() for n in st.keys()} == {"F16"}
    assert shipped["unet"].dtype == torch.float32 and shipped["tokenizer"].model_max_length == 77


def test_shipped_model_draws(shipped):
    "A quick quality floor on 8 held-out prompts (the notebook scores 48)."
    scores, _, _ = micro.evaluate(shipped, heldout_triples()[::3], n_seeds=1)
    assert scores["colour"] >= 0.75 and scores["background"] >= 0.75, scores


def test_diffusers_loads_shipped_folder(shipped):
    "diffusers' StableDiffusionPipeline loads the folder unchanged and draws our image within 1/255."
    diffusers = pytest.importorskip("diffusers")
    from diffuse_nb.sd import txt2img
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(micro.MICRO_PATH, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompt, kw = "a red circle on a white background", dict(num_inference_steps=4, guidance_scale=5.0)
    ref = pipe(prompt, generator=torch.Generator("cpu").manual_seed(0), output_type="np", **kw).images[0]
    ref = (ref * 255).round().astype(np.int16)
    ours = np.asarray(txt2img(prompt, model=micro.MICRO_PATH, seed=0, progress=False, **kw).images[0], np.int16)
    loop = micro.generate(shipped, [prompt], [0], **kw)[0].permute(1, 2, 0).numpy().astype(np.int16)
    assert ref.shape == ours.shape == (64, 64, 3)
    assert np.abs(ours - ref).max() <= 1 and np.abs(loop - ref).max() <= 1
