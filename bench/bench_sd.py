"""Benchmark: full-size SD 2.1 txt2img on the CPU — diffuse_nb's `txt2img` vs diffusers' `StableDiffusionPipeline`.

Random weights, float32, 512×512, 4 DDIM steps, guidance 7.5. The random full-size pipeline is built once with diffusers
and saved with `save_pretrained` to a folder under tmp/ (gitignored); both sides load that same folder. Each run is a fresh
subprocess (so each side's peak RSS is its own: VmHWM of that process), the runs are interleaved (ours, diffusers, ours,
…) so machine load hits both alike, and the page cache is warmed first. Reported per side: load seconds, generation
seconds (and our per-phase seconds), total = load + first generation, the process's CPU time over the same span (less
sensitive than wall time to other load on the machine), peak RSS, and, outside the total, the seconds of importing the
library; then the ratios ours / diffusers (medians).

    python bench/bench_sd.py                    # 2 repetitions, 2 threads
    python bench/bench_sd.py --reps 3 --threads 2
    python bench/bench_sd.py --tiny             # a quick smoke run of the script itself on tiny random models
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photograph of an astronaut riding a horse"

# stabilityai/stable-diffusion-2-1: unet/config.json, vae/config.json, text_encoder/config.json, scheduler_config.json
SD21_UNET = dict(attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=1024,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], layers_per_block=2, sample_size=96,
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, use_linear_projection=True,
                 upcast_attention=True, in_channels=4, out_channels=4, norm_num_groups=32)
SD21_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4, layers_per_block=2,
                up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, sample_size=768, scaling_factor=0.18215)
SD21_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu",
                 projection_dim=512, vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                 pad_token_id=1)
SD21_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")


def build(folder: Path, tiny: bool):
    "Assemble the random pipeline with diffusers/transformers and save it (once)."
    if (folder / "model_index.json").is_file(): return
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer as RefTokenizer
    from diffuse_nb.clip_tokenizer import CLIPTokenizer
    from diffuse_nb.testing import tiny_clip_config, tiny_unet_config, tiny_vae_config
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet_cfg, vae_cfg, text_cfg = ((tiny_unet_config(), tiny_vae_config(), tiny_clip_config(hidden_act="gelu")) if tiny
                                   else (SD21_UNET, SD21_VAE, SD21_TEXT))
    tok_dir = CLIPTokenizer.from_bpe_file(pad_token="!").save_pretrained(folder.parent / f"{folder.name}_tokenizer")
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
                                   tokenizer=RefTokenizer.from_pretrained(tok_dir), unet=UNet2DConditionModel(**unet_cfg),
                                   scheduler=DDIMScheduler(**SD21_SCHEDULER), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"built and saved {folder} in {time.perf_counter() - t0:.0f} s", flush=True)


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"): return int(line.split()[1]) * 1024
    return 0


def run_side(side: str, folder: Path, threads: int, size: int, out: Path):
    "One measured run in this (fresh) process; prints a JSON line."
    t_import = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    if side == "ours":
        from diffuse_nb.sd import load_pipeline, txt2img
    else:
        from diffusers import StableDiffusionPipeline
    rss_imports = peak_rss()
    t0 = time.perf_counter(); c0 = time.process_time()
    if side == "ours":
        pipe = load_pipeline(folder, profile="cpu_only")
        t1 = time.perf_counter()
        res = txt2img(PROMPT, pipe, height=size, width=size, num_inference_steps=4, guidance_scale=7.5, seed=0,
                      progress=False)
        image, phases = res.images[0], {k: v["seconds"] for k, v in res.metadata["phases"].items()}
    else:
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        t1 = time.perf_counter()
        image = pipe(PROMPT, height=size, width=size, num_inference_steps=4, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(0)).images[0]
        phases = {}
    t2 = time.perf_counter(); cpu_s = time.process_time() - c0
    image.save(out)
    print(json.dumps(dict(side=side, import_s=t0 - t_import, load_s=t1 - t0, gen_s=t2 - t1, total_s=t2 - t0,
                          cpu_s=cpu_s, phases=phases,
                          peak_rss=peak_rss(), rss_after_imports=rss_imports, image=str(out))), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny random models: checks the script, measures nothing useful")
    ap.add_argument("--run", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = args.folder or ROOT / "tmp" / "bench_sd" / ("tiny_sd21" if args.tiny else "sd21_random")
    size = args.size or (64 if args.tiny else 512)
    if args.run: return run_side(args.run, folder, args.threads, size, args.out)

    build(folder, args.tiny)
    for f in folder.rglob("*.safetensors"): f.read_bytes()                     # warm the page cache for both sides
    results = {"ours": [], "diffusers": []}
    for rep in range(args.reps):
        for side in ("ours", "diffusers"):
            out = folder.parent / f"{folder.name}_{side}_{rep}.png"
            cmd = [sys.executable, __file__, "--run", side, "--folder", str(folder), "--threads", str(args.threads),
                   "--size", str(size), "--out", str(out)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if p.returncode or not line: sys.exit(f"{side} run failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
            r = json.loads(line[-1]); results[side].append(r)
            print(f"rep {rep} {side:9s}: load {r['load_s']:6.2f} s, generate {r['gen_s']:6.2f} s, total {r['total_s']:6.2f} s, "
                  f"CPU {r['cpu_s']:6.1f} s, "
                  f"peak RSS {r['peak_rss'] / 2**30:5.2f} GiB (after imports {r['rss_after_imports'] / 2**30:4.2f})"
                  + (f"  phases {r['phases']}" if r["phases"] else ""), flush=True)
    report(results, args, size)


def report(results, args, size):
    import numpy as np
    from PIL import Image
    med = lambda side, k: statistics.median(r[k] for r in results[side])
    a, b = (np.asarray(Image.open(results[s][0]["image"]), dtype=np.int16) for s in ("ours", "diffusers"))
    print(f"\nSD 2.1 txt2img {size}², 4 DDIM steps, guidance 7.5, fp32, random weights, {args.threads} threads, "
          f"{args.reps} interleaved runs per side (medians)")
    print("| | ours | diffusers | ours / diffusers |\n|---|---:|---:|---:|")
    for k, name in (("load_s", "load (s)"), ("gen_s", "first generation (s)"), ("total_s", "total (s)"),
                    ("cpu_s", "CPU time of load + generation (s)"), ("import_s", "import, not in the total (s)")):
        print(f"| {name} | {med('ours', k):.2f} | {med('diffusers', k):.2f} | {med('ours', k) / med('diffusers', k):.3f} |")
    rss = lambda s: med(s, "peak_rss") / 2**30
    print(f"| peak RSS (GiB) | {rss('ours'):.2f} | {rss('diffusers'):.2f} | {rss('ours') / rss('diffusers'):.3f} |")
    phases = {k: statistics.median(r["phases"][k] for r in results["ours"]) for k in results["ours"][0]["phases"]}
    print("ours per phase (s):", {k: round(v, 2) for k, v in phases.items()})
    print(f"image max |ours - diffusers| = {np.abs(a - b).max()}/255, mean {np.abs(a - b).mean():.3f}/255")


if __name__ == "__main__":
    main()
