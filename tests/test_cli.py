"The `diffuse-nb` command: every sub-command in-process, the console script, bad input (exit 2), torchrun."
import os, shutil, subprocess, sys, types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse_nb import cli, sd
from diffuse_nb.core import read_image_metadata
from diffuse_nb.demo import MICRO_DIR

pytest.importorskip("diffusers")                          # the tiny pipelines are built with diffusers
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    "A tiny random SD pipeline folder (64×64 default, sizes multiples of 4, DDIM)."
    return str(sd.tiny_pipeline("sd", path=tmp_path_factory.mktemp("model") / "tiny_sd")[1])


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def pixels(path) -> np.ndarray: return np.asarray(Image.open(path).convert("RGB"))


# ---- txt2img / img2img
def test_txt2img_png_with_settings(model, tmp_path, capsys):
    out = tmp_path / "a.png"
    code, stdout, err = run(capsys, "txt2img", "a red cube", "--model", model, "--steps", 3, "--seed", 5,
                            "--guidance", 4, "--negative", "blurry", "--scheduler", "euler", "--size", "48x32",
                            "--profile", "cpu_only", "--out", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert Image.open(out).size == (48, 32)                               # WIDTHxHEIGHT
    m = read_image_metadata(out)
    assert (m["prompt"], m["negative_prompt"], m["seed"], m["num_inference_steps"], m["guidance_scale"],
            m["scheduler"], m["profile"]) == ("a red cube", "blurry", "5", "3", "4.0", "euler", "cpu_only")
    again = tmp_path / "b.png"                                           # same settings -> same picture
    assert run(capsys, "txt2img", "a red cube", "--model", model, "--steps", 3, "--seed", 5, "--guidance", 4,
               "--negative", "blurry", "--scheduler", "euler", "--size", "48x32", "--out", again)[0] == 0
    assert np.array_equal(pixels(out), pixels(again))


def test_threads_set_first(model, capsys):
    "--threads applies before anything else (here a bad size stops the run before loading)."
    try:
        assert run(capsys, "txt2img", "a", "--model", model, "--size", "50", "--threads", 2)[0] == 2
        assert torch.get_num_threads() == 2
    finally: torch.set_num_threads(1)


def test_txt2img_num_images_out_dir_and_overwrite(model, tmp_path, capsys):
    code, stdout, err = run(capsys, "txt2img", "a cat", "--model", model, "--steps", 2, "-n", 2,
                            "--out", tmp_path / "cat.png", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat_0.png", "cat_1.png"]
    code, _, err = run(capsys, "txt2img", "a cat", "--model", model, "--steps", 2, "-n", 2,
                       "--out", tmp_path / "cat.png")
    assert code == 2 and "cat_0.png already exists" in err and "--overwrite" in err
    assert run(capsys, "txt2img", "a cat", "--model", model, "--steps", 2, "-n", 2, "--out", tmp_path / "cat.png",
               "--overwrite", "--quiet")[0] == 0
    code, stdout, _ = run(capsys, "txt2img", "a dog", "--model", model, "--steps", 2,
                          "--out-dir", tmp_path / "dir", "--quiet")
    assert code == 0 and Path(stdout.strip()).parent == tmp_path / "dir" and Path(stdout.strip()).is_file()


def test_img2img(model, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src)
    code, stdout, err = run(capsys, "img2img", src, "a blue ball", "--model", model, "--strength", 0.5,
                            "--steps", 4, "--seed", 1, "--out", tmp_path / "out.png", "--quiet")
    assert code == 0, err
    m = read_image_metadata(tmp_path / "out.png")
    assert (m["task"], m["strength"], m["seed"]) == ("img2img", "0.5", "1")
    assert Image.open(tmp_path / "out.png").size == (56, 40)             # the input's size (multiples of 4)


@pytest.mark.skipif(not (MICRO_DIR / "model_index.json").is_file(), reason="the micro model is not installed")
def test_default_model_is_micro(tmp_path, capsys):
    code, _, err = run(capsys, "txt2img", "a red circle on a white background", "--steps", 3,
                       "--out", tmp_path / "m.png", "--quiet")
    assert code == 0, err
    meta = read_image_metadata(tmp_path / "m.png")
    assert meta["model"] == "micro"                                  # the alias, not this machine's folder
    assert "negative_prompt" not in meta                             # unset settings are left out, not "null"


# ---- batch mode
PROMPTS = ["a red cube", "", "a blue ball", "a green cone"]


def batch(capsys, model, tmp_path, name="out", *extra):
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    return run(capsys, "txt2img", "--prompts", tmp_path / "p.txt", "--out-dir", tmp_path / name, "--model",
               model, "--steps", 2, "--seed", 10, "--quiet", *extra)


def test_batch_files_seeds_and_overwrite(model, tmp_path, capsys):
    code, stdout, err = batch(capsys, model, tmp_path)
    assert code == 0, err
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["00000_a_red_cube.png", "00002_a_blue_ball.png", "00003_a_green_cone.png"]
    assert [read_image_metadata(f)["seed"] for f in files] == ["10", "12", "13"]       # seed + line index
    assert stdout.split() == [str(f) for f in files]
    single = tmp_path / "single.png"                          # an image depends on its line only
    assert run(capsys, "txt2img", "a blue ball", "--model", model, "--steps", 2, "--seed", 12, "--out", single,
               "--quiet")[0] == 0
    assert np.array_equal(pixels(single), pixels(files[1]))
    code, _, err = batch(capsys, model, tmp_path)
    assert code == 2 and "already exists (and 2 more)" in err
    assert batch(capsys, model, tmp_path, "out", "--overwrite")[0] == 0


def test_torchrun_two_processes_same_images(model, tmp_path, capsys):
    "torchrun --nproc-per-node 2 (gloo on CPU): each process its share, the images of one process."
    assert batch(capsys, model, tmp_path, "one")[0] == 0
    cmd = [BIN / "torchrun", "--standalone", "--nproc-per-node", 2, "-m", "diffuse_nb.cli", "txt2img",
           "--prompts", tmp_path / "p.txt", "--out-dir", tmp_path / "two", "--model", model, "--steps", 2,
           "--seed", 10, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [f.name for f in two] == [f.name for f in one]
    for a, b in zip(one, two): assert np.array_equal(pixels(a), pixels(b)), b.name
    assert len(proc.stdout.split()) == 3                                 # every process printed its files


# ---- bad input: exit code 2, one message on stderr naming the argument, nothing loaded
def _bad_cases(model, tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "p.txt").write_text("a cat\n")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    (tmp_path / "exists.png").write_bytes(b"")
    t2i = ["txt2img", "a cat", "--model", model]
    return {
        "unknown model": (["txt2img", "a cat", "--model", "mikro"], "model='mikro' is not allowed"),
        "folder without pipeline": (["txt2img", "a cat", "--model", tmp_path], "without model_index.json"),
        "repo not in cache": (["txt2img", "a cat", "--model", "nobody/nothing-here"], "not in the local"),
        "size not a multiple": (t2i + ["--size", "50"], "multiples of 4"),
        "malformed size": (t2i + ["--size", "64x"], "argument --size"),
        "zero size": (t2i + ["--size", "0"], "argument --size"),
        "existing output": (t2i + ["--out", tmp_path / "exists.png"], "already exists"),
        "not png": (t2i + ["--out", tmp_path / "a.jpg"], "must end in .png"),
        "unknown scheduler": (t2i + ["--scheduler", "heun"], "argument --scheduler: invalid choice: 'heun'"),
        "scheduler of another family": (t2i + ["--scheduler", "flow_euler"], "allowed for this model"),
        "unknown profile": (t2i + ["--profile", "tiny_gpu"], "argument --profile: invalid choice"),
        "zero steps": (t2i + ["--steps", "0"], "argument --steps: '0' is out of range"),
        "steps not int": (t2i + ["--steps", "ten"], "is not an integer"),
        "zero threads": (t2i + ["--threads", "0"], "argument --threads"),
        "negative guidance": (t2i + ["--guidance", "-1"], "argument --guidance"),
        "nan guidance": (t2i + ["--guidance", "nan"], "argument --guidance"),
        "no prompt": (["txt2img", "--model", model], "no prompt"),
        "empty prompts file": (["txt2img", "--prompts", tmp_path / "empty.txt", "--out-dir", tmp_path / "o",
                                "--model", model], "has no prompts"),
        "missing prompts file": (["txt2img", "--prompts", tmp_path / "nope.txt", "--out-dir", tmp_path / "o"],
                                 "does not exist"),
        "prompts without out-dir": (["txt2img", "--prompts", tmp_path / "p.txt", "--model", model],
                                    "needs --out-dir"),
        "prompt and prompts": (["txt2img", "a", "--prompts", tmp_path / "p.txt", "--out-dir", tmp_path / "o"],
                               "both given"),
        "unreadable image": (["img2img", tmp_path / "broken.png", "a cat", "--model", model],
                             "could not be read as an image"),
        "missing image": (["img2img", tmp_path / "nope.png", "a cat", "--model", model], "does not exist"),
        "strength 0": (["img2img", tmp_path / "broken.png", "a cat", "--strength", "0"], "argument --strength"),
        "strength 1.5": (["img2img", tmp_path / "broken.png", "a cat", "--strength", "1.5"], "(0.0, 1.0]"),
        "negative vram": (["profile", "--vram", "-1"], "argument --vram"),
        "unknown kind": (["profile", "--kind", "sd3"], "argument --kind: invalid choice"),
        "no command": ([], "choose a command"),
        "unknown command": (["paint"], "invalid choice: 'paint'"),
    }


def test_bad_input_exit_2_before_loading(model, tmp_path, capsys, monkeypatch):
    def no_loading(*a, **k): raise AssertionError("weights were loaded before the input was checked")
    monkeypatch.setattr(sd, "load_pipeline", no_loading)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for what, (argv, msg) in _bad_cases(model, tmp_path).items():
        code, out, err = run(capsys, *argv)
        assert code == 2, (what, code, err)
        assert msg in err, (what, err)
        assert "Traceback" not in err and "AssertionError" not in err, (what, err)


def test_help_and_usage(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in cli.COMMANDS)
    code, out, _ = run(capsys, "txt2img", "--help")
    assert code == 0 and "--prompts" in out and "WIDTHxHEIGHT" in out


# ---- txt2vid
def test_txt2vid_not_available(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffuse_nb.ltx2", None)            # import fails as if the module were absent
    code, _, err = run(capsys, "txt2vid", "a cat")
    assert code == 2 and "txt2vid is not available yet" in err and "Traceback" not in err


def fake_ltx2(monkeypatch, fn):
    mod = types.ModuleType("diffuse_nb.ltx2"); mod.txt2vid_ltx2 = fn
    monkeypatch.setitem(sys.modules, "diffuse_nb.ltx2", mod)


def test_txt2vid_passes_options(tmp_path, capsys, monkeypatch):
    seen = {}
    def txt2vid_ltx2(prompt, model="repo/ltx", negative_prompt=None, width=768, height=512, num_frames=121,
                     fps=24.0, num_inference_steps=30, guidance_scale=3.0, seed=None, memory_profile="auto",
                     output_file=None, progress=True, overwrite=False):
        seen.update(locals()); Path(output_file).write_bytes(b"mp4")
    fake_ltx2(monkeypatch, txt2vid_ltx2)
    out = tmp_path / "v.mp4"
    code, stdout, err = run(capsys, "txt2vid", "a cat", "--frames", 9, "--fps", 12, "--size", "96x64", "--steps",
                            4, "--seed", 3, "--profile", "cpu_only", "--negative", "dark", "--out", out, "--quiet")
    assert code == 0, err
    assert (seen["prompt"], seen["num_frames"], seen["fps"], seen["width"], seen["height"]) == ("a cat", 9, 12.0,
                                                                                               96, 64)
    assert (seen["num_inference_steps"], seen["seed"], seen["memory_profile"], seen["output_file"]) == \
        (4, 3, "cpu_only", out)
    assert (seen["model"], seen["guidance_scale"], seen["progress"]) == ("repo/ltx", 3.0, False)   # its defaults
    code, _, err = run(capsys, "txt2vid", "a cat", "--stg-blocks", "1,x")
    assert code == 2 and "argument --stg-blocks" in err and "'27,28'" in err
    assert stdout.strip() == str(out)
    code, _, err = run(capsys, "txt2vid", "a cat", "--out", out)         # the video is there now
    assert code == 2 and "already exists" in err


def test_txt2vid_option_it_does_not_take(capsys, monkeypatch):
    fake_ltx2(monkeypatch, lambda prompt, num_frames=9: None)
    code, _, err = run(capsys, "txt2vid", "a cat", "--scheduler", "flow_euler")
    assert code == 2 and "takes no ['scheduler']" in err


def test_txt2vid_real_pipeline_offline(capsys, monkeypatch):
    "With the LTX-2 pipeline installed, the default model fails fast offline and says how to get it."
    pytest.importorskip("diffuse_nb.ltx2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "txt2vid", "a cat", "--frames", 9)
    assert code == 2 and "Traceback" not in err and "HF_HUB_OFFLINE" in err
    code, _, err = run(capsys, "txt2vid", "a cat", "--scheduler", "flow_euler")      # LTX-2 picks its own
    assert code == 2 and "takes no ['scheduler']" in err


@pytest.mark.slow
def test_txt2vid_tiny_ltx2(tmp_path, capsys):
    "The real pipeline end to end on a tiny random LTX-2 folder: an mp4 appears; a bad length is refused."
    pytest.importorskip("diffuse_nb.ltx2")
    from diffuse_nb.ltx2_pipeline import tiny_ltx2_pipeline
    path = tiny_ltx2_pipeline(tmp_path / "ltx2")[1]
    argv = ["txt2vid", "a cat", "--model", path, "--frames", 9, "--size", "64", "--steps", 2,
            "--stg-blocks", "1", "--max-sequence-length", 64, "--out", tmp_path / "v.mp4", "--quiet"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "v.mp4") and (tmp_path / "v.mp4").stat().st_size > 0
    code, _, err = run(capsys, *argv[:-5], "--max-sequence-length", 1024)
    assert code == 2 and "max_sequence_length=1024" in err


# ---- profile
def test_profile(model, capsys):
    code, out, _ = run(capsys, "profile", "--kind", "sdxl", "--vram", 8)
    assert code == 0
    assert "auto -> gpu_poor: 8.0 GiB free >= 6.0 GiB" in out and "full_gpu 16, balanced 10" in out
    assert "estimated VRAM peak of gpu_poor: 4.93 GiB" in out and "| cpu_only |" in out and "RAM:" in out
    code, out, _ = run(capsys, "profile", "--model", model)
    assert code == 0 and "kind sd15" in out and "full_gpu 4, balanced 3" in out
    if not torch.cuda.is_available(): assert "GPU: none" in out and "auto -> cpu_only" in out


# ---- download (offline only)
def test_download_offline(model, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "download", "nobody/not-cached")
    assert code == 2 and "HF_HUB_OFFLINE=1" in err and "diffuse-nb download nobody/not-cached" in err
    code, out, _ = run(capsys, "download", "micro")
    assert code == 0 and "ships inside the package" in out
    assert run(capsys, "download", model)[0] == 2
    code, _, err = run(capsys, "download", "not a repo")
    assert code == 2 and "not a Hub repo id" in err


def fake_hub_cache(cache: Path, repo: str, folder: str) -> Path:
    "A Hugging Face cache holding `folder` as the main revision of `repo` (what a download leaves)."
    owner, name = repo.split("/")
    base, commit = cache / f"models--{owner}--{name}", "0" * 40
    (base / "refs").mkdir(parents=True); (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)
    return base / "snapshots" / commit


def test_download_from_local_cache(model, tmp_path, capsys, monkeypatch):
    "download finds a complete pipeline in the (local) Hub cache; an incomplete one is refused offline."
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = fake_hub_cache(tmp_path / "hub", "someone/tiny-sd", model)
    code, out, err = run(capsys, "download", "someone/tiny-sd")
    assert code == 0, err
    assert Path(out.strip()) == snap
    broken = fake_hub_cache(tmp_path / "hub", "someone/no-unet", model)
    for f in (broken / "unet").glob("*.safetensors"): f.unlink()
    code, _, err = run(capsys, "download", "someone/no-unet")
    assert code == 2 and "not (completely) in the local" in err


def test_console_script(model, tmp_path):
    "The installed `diffuse-nb` script: download from a (local) Hub cache, generate from it, a bad input."
    exe = BIN / "diffuse-nb"
    assert exe.is_file(), "the console script is missing: pip install -e . (settings.ini declares it)"
    snap = fake_hub_cache(tmp_path / "hub", "someone/tiny-sd", model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    sh = lambda *a: subprocess.run([str(exe), *map(str, a)], capture_output=True, text=True, env=env, timeout=300)
    p = sh("download", "someone/tiny-sd")
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()) == snap
    p = sh("txt2img", "a cat", "--model", "someone/tiny-sd", "--steps", 2, "--out", tmp_path / "c.png", "--quiet")
    assert p.returncode == 0, p.stderr
    assert read_image_metadata(tmp_path / "c.png")["model"] == "someone/tiny-sd"
    p = sh("txt2img", "a cat", "--model", "someone/tiny-sd", "--size", "50")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "multiples of 4" in p.stderr


class _ClosedPipe:
    "A stdout whose reader has gone (`diffuse-nb profile | head`): every write raises BrokenPipeError."
    def __init__(self, f): self.f = f
    def write(self, s): raise BrokenPipeError(32, "Broken pipe")
    def flush(self): pass
    def fileno(self): return self.f.fileno()


def test_closed_pipe_ends_quietly(tmp_path, monkeypatch):
    with open(tmp_path / "stdout", "w") as f:
        monkeypatch.setattr(sys, "stdout", _ClosedPipe(f))
        assert cli.main(["profile"]) == 0                  # no traceback, not a failure
