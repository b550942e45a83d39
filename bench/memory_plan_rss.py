"""Measured peak RSS of full-size SD 2.1 txt2img on the CPU, per phase, against `memory_plan`'s estimate.

    nice -n 10 python bench/memory_plan_rss.py                   # measure what is missing, then the table
    python bench/memory_plan_rss.py --table                      # the table from the measurements saved so far
    python bench/memory_plan_rss.py --one float32 512            # (the child process of one measurement)
    nice -n 10 python bench/memory_plan_rss.py --ltx2            # LTX-2 activation estimators vs measured

The random full-size SD 2.1 folder of `bench/bench_sd.py` (built there if missing) is loaded with
`load_pipeline(folder, profile="cpu_only")`: float32, memory-mapped weights, convolutions prepacked for oneDNN;
for float8 / int8 / NF4 every component is cast or quantized after loading (no prepacking). Then one
`txt2img` call: one denoising step, guidance 7.5 (the UNet sees a batch of 2), `height`×`width` pixels, one
thread. Each measurement runs once in a fresh process; the peak of each phase is the process's RSS high-water
mark (`VmHWM`) over that phase. Measurements are saved to `tmp/memory_plan/rss_runs.json`, so the estimate
can be recomputed without running them again.

`--ltx2`: medium-size LTX-2 DiT, video VAE (whole and tiled) and Gemma3 configs, float32 on one thread, each
call once in a fresh process: the peak RSS over the call minus the RSS before it (after a warm-up call at a
small size), beside the `meta` count of the same call.
"""
import argparse, gc, json, os, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FOLDER = ROOT / "tmp" / "bench_sd" / "sd21_random"
RUNS = ROOT / "tmp" / "memory_plan" / "rss_runs.json"
FORMATS = ("float32", "float8", "int8", "nf4")
SIZES = (512, 768)
PROMPT = "a photograph of an astronaut riding a horse"


def child(fmt: str, size: int) -> dict:
    import ctypes, dataclasses, torch
    torch.set_num_threads(1)
    from diffuse_nb.memory import process_rss, resolve_profile
    from diffuse_nb.quantize import apply_layerwise_casting, quantize_
    from diffuse_nb.sd import load_pipeline, txt2img
    from diffuse_nb.sd_cpu import release_mapped_weights
    base = process_rss()                                                # Python + torch + diffuse_nb imported
    profile = resolve_profile("cpu_only", model_kind="sd21")
    if fmt != "float32": profile = dataclasses.replace(profile, cpu_prepack=False)
    t0 = time.perf_counter()
    pipe = load_pipeline(FOLDER, profile=profile)
    for name in ("text_encoder", "unet", "vae"):
        m = getattr(pipe, name)
        if fmt == "float8": apply_layerwise_casting(m, torch.float8_e4m3fn)
        elif fmt != "float32": quantize_(m, fmt)
        if fmt != "float32": release_mapped_weights(m, min_bytes=0)     # the float32 pages just encoded
    gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded = process_rss()
    res = txt2img(PROMPT, pipe, height=size, width=size, num_inference_steps=1, guidance_scale=7.5, seed=0,
                  progress=False)
    phases = {k: v["peak_bytes"] for k, v in res.metadata["phases"].items()}
    return dict(format=fmt, size=size, baseline=base, loaded=loaded, phases=phases,
                seconds=round(time.perf_counter() - t0, 1))


LTX2_CASES = {   # medium configs, float32 on the CPU: (model, call) built in the child
    "dit 512x768x49": "dit", "vae decode 256x256x17": "vae", "vae decode tiled 512x512x33": "vae_tiled",
    "gemma3 2048 tokens": "gemma3"}
MEDIUM_DIT = dict(in_channels=32, out_channels=32, num_attention_heads=8, attention_head_dim=64,
                  cross_attention_dim=512, audio_in_channels=16, audio_out_channels=16,
                  audio_num_attention_heads=4, audio_attention_head_dim=32, audio_cross_attention_dim=128,
                  num_layers=2, caption_channels=512, rope_type="split")
MEDIUM_VAE = dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8,
                  decoder_block_out_channels=(32, 64, 128), decoder_layers_per_block=(1, 1, 1, 1),
                  block_out_channels=(16, 32, 64, 64), layers_per_block=(1, 1, 1, 1, 1))
MEDIUM_GEMMA = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=4,
                    head_dim=64, num_hidden_layers=4, vocab_size=1024, sliding_window=512)


def ltx2_child(case: str) -> dict:
    "Measured (peak RSS over the call minus RSS before it) and `meta`-counted activation bytes of one case."
    import ctypes, torch
    torch.set_num_threads(1)
    from diffuse_nb.gemma3 import Gemma3TextModel
    from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel
    from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video
    from diffuse_nb.memory import PeakRSS, process_rss
    from diffuse_nb.memory_plan import (dit_activation_bytes, ltx2_tokens, ltx2_vae_decode_activation_bytes,
                                        text_encoder_activation_bytes)
    f32, kind = torch.float32, LTX2_CASES[case]
    if kind == "dit":
        m, (h, w, f) = LTX2VideoTransformer3DModel(**MEDIUM_DIT).eval(), (512, 768, 49)
        def inputs(h, w, f):
            t, c = ltx2_tokens(h, w, f), m.config
            step = torch.full((2,), 500.0)
            pw, apw = ((c.caption_channels,) * 2 if c.use_prompt_embeddings else
                       (c.cross_attention_dim, c.audio_cross_attention_dim))
            x, a = torch.randn(2, t["video"], c.in_channels), torch.randn(2, t["audio"], c.audio_in_channels)
            return lambda: m(x, a, text, text, step, sigma=step / 1000, num_frames=t["frames"], height=t["h"],
                             width=t["w"], audio_num_frames=t["audio"])
        text = torch.randn(2, 1024, 512)
        estimate, small = dit_activation_bytes(m, h, w, f, 2, f32), (64, 64, 9)
    elif kind.startswith("vae"):
        m = AutoencoderKLLTX2Video.from_config(MEDIUM_VAE).eval()
        (h, w, f), tiles = ((512, 512, 33), (256, 192, 16, 8)) if kind == "vae_tiled" else ((256, 256, 17), None)
        if tiles: m.enable_tiling(tiles[0], tiles[0], tiles[2], tiles[1], tiles[1], tiles[3], temporal=True)
        def inputs(h, w, f):
            t = ltx2_tokens(h, w, f)
            z = torch.randn(1, m.config.latent_channels, t["frames"], t["h"], t["w"])
            return lambda: m.decode(z, progress=False)
        estimate, small = ltx2_vae_decode_activation_bytes(m, h, w, f, 1, f32, tiles, cpu=True), (64, 64, 9)
    else:
        m, (h, w, f) = Gemma3TextModel.from_config(MEDIUM_GEMMA).eval(), (2048, 0, 0)
        def inputs(n, *_):
            ids = torch.randint(0, m.config.vocab_size, (2, n))
            return lambda: m(ids, output_hidden_states=True)
        estimate, small = text_encoder_activation_bytes(m, h, 2, f32), (64, 0, 0)
    with torch.no_grad():
        inputs(*small)()                                                # kernels and thread pools loaded
        run = inputs(h, w, f)                                           # the inputs exist before the count
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = process_rss(); meter = PeakRSS(reset=True).start()
        out = run()
        measured = meter.stop() - before
    return dict(case=case, measured=measured, estimate=estimate)


def measure(fmt: str, size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", fmt, str(size)], capture_output=True, text=True)
    if out.returncode: raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_runs() -> dict:
    return json.loads(RUNS.read_text()) if RUNS.is_file() else {}


def ltx2_table():
    "Each LTX-2 case once in a fresh process; estimate / measured activation bytes."
    print("| call (float32, CPU) | estimated MiB | measured MiB | estimate / measured |\n|---|---:|---:|---:|")
    for case in LTX2_CASES:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))   # blocks over 1 MiB: mapped, freed at once
        out = subprocess.run([sys.executable, __file__, "--ltx2", case], capture_output=True, text=True, env=env)
        if out.returncode: raise RuntimeError(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {case} | {r['estimate'] / 2**20:.0f} | {r['measured'] / 2**20:.0f} | "
              f"{r['estimate'] / r['measured']:.2f} |", flush=True)


def estimates(size: int) -> dict:
    "Per format, per phase: the estimated terms of the measured run (float32 activations, a batch of 2)."
    import torch
    from diffuse_nb.memory_plan import (CPU_FORMATS, components_from_folder, cpu_phase_bytes, measure,
                                        text_encoder_activation_bytes, unet_activation_bytes,
                                        vae_decode_activation_bytes)
    mods, f32 = components_from_folder(FOLDER), torch.float32
    acts = dict(text_encoder=text_encoder_activation_bytes(mods["text_encoder"], 77, 2, f32),
                unet=unet_activation_bytes(mods["unet"], size, size, 2, f32),
                vae=vae_decode_activation_bytes(mods["vae"], size, size, 1, f32))
    sizes = measure(mods)
    return {fmt: cpu_phase_bytes(sizes, acts, fmt) for fmt in CPU_FORMATS}


def sd_table(runs: dict):
    "Estimated / measured peak RSS per run and phase."
    print("| format | size | phase | estimated MiB | measured MiB | estimate / measured |\n|---|---:|---|---:|---:|---:|")
    for size in sorted({r["size"] for r in runs.values()}):
        est = estimates(size)
        for key, r in sorted(runs.items()):
            if r["size"] != size: continue
            for phase, measured in r["phases"].items():
                e = sum(est[r["format"]][phase].values())
                print(f"| {r['format']} | {size}² | {phase} | {e / 2**20:.0f} | {measured / 2**20:.0f} | "
                      f"{e / measured:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("FORMAT", "SIZE"))
    ap.add_argument("--ltx2", nargs="?", const="all", help="the LTX-2 activation checks (or one case)")
    ap.add_argument("--table", action="store_true", help="no new measurements")
    ap.add_argument("--formats", nargs="*", default=FORMATS)
    ap.add_argument("--sizes", nargs="*", type=int, default=SIZES)
    a = ap.parse_args()
    if a.one: print(json.dumps(child(a.one[0], int(a.one[1])))); return
    if a.ltx2 in LTX2_CASES: print(json.dumps(ltx2_child(a.ltx2))); return
    if a.ltx2: return ltx2_table()
    runs = load_runs()
    if not a.table:
        if not (FOLDER / "model_index.json").is_file():
            sys.path.insert(0, str(ROOT / "bench")); from bench_sd import build; build(FOLDER, tiny=False)
        for size in a.sizes:
            for fmt in a.formats:
                key = f"{fmt} {size}"
                if key in runs: continue
                runs[key] = measure(fmt, size)
                RUNS.parent.mkdir(parents=True, exist_ok=True); RUNS.write_text(json.dumps(runs, indent=1))
                print(key, runs[key], flush=True)
    sd_table(runs)


if __name__ == "__main__":
    main()
