"""GPU benchmark: full-size SDXL (random weights, float16, 1024², 4 Euler steps, guidance 5) per memory profile.

For each of diffuse_nb's GPU profiles (full_gpu, balanced, gpu_poor, extreme) and, beside them, diffusers'
`StableDiffusionXLPipeline` on the GPU, with `enable_model_cpu_offload()` and with group offloading (block level,
CUDA streams): peak VRAM (CUDA allocator peak over load and generation), seconds per denoising step (median of
steps 2..n, timed by the step callback after a CUDA synchronize), generation and load seconds, and the host's peak
RSS. Every configuration runs in a fresh subprocess, so VRAM and host memory start clean and each peak is that
run's own. The random pipeline is built once on the GPU and saved with diffusers' `save_pretrained` (float16,
~7 GB) under tmp/. cpu_only is left out: it is a CPU profile (see bench/bench_sd.py). Planned to finish in well
under 8 minutes on one recent GPU: each configuration gets at most --timeout s and the whole script
--budget s (450 by default); configurations past the budget are listed as not run.

    python bench/gpu_sdxl_profiles.py                 # needs one CUDA GPU
    python bench/gpu_sdxl_profiles.py --dry-run       # tiny random SDXL on the CPU: runs every code path
"""
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photograph of an astronaut riding a horse on the moon"
OURS = ("full_gpu", "balanced", "gpu_poor", "extreme")
THEIRS = ("diffusers", "diffusers_model_offload", "diffusers_group_offload")

# stabilityai/stable-diffusion-xl-base-1.0: {unet,vae,text_encoder,text_encoder_2}/config.json, scheduler config
SDXL_UNET = dict(block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20],
                 transformer_layers_per_block=[1, 2, 10], layers_per_block=2, sample_size=128,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True, in_channels=4,
                 out_channels=4)
SDXL_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                sample_size=1024, scaling_factor=0.13025, force_upcast=True)
VIT_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
             hidden_act="quick_gelu", projection_dim=768, vocab_size=49408, max_position_embeddings=77,
             bos_token_id=0, eos_token_id=2, pad_token_id=1)
VIT_BIGG = dict(VIT_L, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                hidden_act="gelu", projection_dim=1280)
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                      timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon")


def build(folder: Path, dry: bool):
    "Random SDXL with diffusers/transformers, initialised on the GPU in float16, saved once."
    if (folder / "model_index.json").is_file(): return
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from transformers import CLIPTokenizer as RefTokenizer
    from diffuse_nb.clip_tokenizer import CLIPTokenizer
    from diffuse_nb.testing import tiny_clip_config, tiny_unet_config, tiny_vae_config
    t0 = time.perf_counter()
    torch.manual_seed(0)
    dev, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.float16)
    cfgs = (SDXL_UNET, SDXL_VAE, VIT_L, VIT_BIGG) if not dry else (
        tiny_unet_config("sdxl"), tiny_vae_config(), tiny_clip_config(), tiny_clip_config(hidden_act="gelu"))
    toks = [CLIPTokenizer.from_bpe_file(**kw).save_pretrained(folder.parent / f"{folder.name}_tok{i}")
            for i, kw in enumerate(({}, {"pad_token": "!"}))]
    with torch.device(dev):
        parts = dict(unet=UNet2DConditionModel(**cfgs[0]), vae=AutoencoderKL(**cfgs[1]),
                     text_encoder=CLIPTextModel(CLIPTextConfig(**cfgs[2])),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfgs[3])))
    parts = {k: m.to(dtype).eval() for k, m in parts.items()}
    pipe = StableDiffusionXLPipeline(**parts, tokenizer=RefTokenizer.from_pretrained(toks[0]),
                                     tokenizer_2=RefTokenizer.from_pretrained(toks[1]),
                                     scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(f"built and saved {folder} in {time.perf_counter() - t0:.0f} s", flush=True)


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"): return int(line.split()[1]) * 1024
    return 0


def run_one(name: str, folder: Path, dry: bool, size: int, steps: int) -> dict:
    "One configuration in this fresh process."
    import torch
    if dry: torch.set_num_threads(1)                          # tiny models: extra threads only add contention
    cuda = torch.cuda.is_available() and not dry
    gpu = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    stamps = []
    def tick(*_): sync(); stamps.append(time.perf_counter())
    t0 = time.perf_counter()
    if name in OURS:
        from diffuse_nb.memory import resolve_profile
        from diffuse_nb.sd import load_pipeline, txt2img_sdxl
        pipe = load_pipeline(folder, profile=resolve_profile(name, model_kind="sdxl", gpu=str(gpu)))
        t1 = time.perf_counter(); tick()
        txt2img_sdxl(PROMPT, pipe, height=size, width=size, num_inference_steps=steps, guidance_scale=5.0,
                     seed=0, progress=False, callback=lambda i, n, lat: tick())
    else:
        from diffusers import StableDiffusionXLPipeline
        pipe = StableDiffusionXLPipeline.from_pretrained(
            folder, torch_dtype=torch.float16 if cuda else torch.float32, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        if name == "diffusers": pipe.to(gpu)
        elif name == "diffusers_model_offload": pipe.enable_model_cpu_offload(device=gpu)
        else: pipe.enable_group_offload(onload_device=gpu, offload_type="block_level", num_blocks_per_group=1,
                                        use_stream=cuda)
        t1 = time.perf_counter(); tick()
        def on_step(p, i, t, kw): tick(); return {}
        pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step)
    sync(); t2 = time.perf_counter()
    step_s = [b - a for a, b in zip(stamps[1:], stamps[2:])] or [stamps[1] - stamps[0]]
    return dict(name=name, load_s=t1 - t0, gen_s=t2 - t1, s_per_step=statistics.median(step_s),
                first_step_s=stamps[1] - stamps[0], peak_vram=torch.cuda.max_memory_allocated() if cuda else 0,
                peak_reserved=torch.cuda.max_memory_reserved() if cuda else 0, peak_rss=peak_rss())


def run_all(args, folder: Path, dry: bool, deadline: float) -> list[dict]:
    "Each configuration in its own process, each within `--timeout` s and all before `deadline`."
    rows = []
    for name in args.only or OURS + THEIRS:
        cmd = [sys.executable, __file__, "--run", name, "--folder", str(folder)] + (["--dry-run"] if dry else [])
        left = deadline - time.perf_counter()
        if left < 20:
            rows.append(dict(name=name, error="not run: the time budget (--budget) is spent"))
            print(json.dumps(rows[-1]), flush=True); continue
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=min(args.timeout, left))
            line = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if p.returncode == 0 and line: row = json.loads(line[-1])
            else: row = dict(name=name, error=((p.stderr.strip().splitlines() or ["?"])[-1])[:100])
        except subprocess.TimeoutExpired: row = dict(name=name, error=f"over {min(args.timeout, left):.0f} s")
        rows.append(row); print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny random SDXL on the CPU (checks the script)")
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    ap.add_argument("--timeout", type=int, default=120, help="seconds allowed per configuration")
    ap.add_argument("--budget", type=int, default=450, help="seconds for the whole script, building included "
                    "(configurations that would start later are reported as not run)")
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    dry = args.dry_run
    folder = args.folder or ROOT / "tmp" / "bench_sd" / ("tiny_sdxl" if dry else "sdxl_random_fp16")
    size, steps = (64, 3) if dry else (1024, 4)
    if args.run:
        print(json.dumps(run_one(args.run, folder, dry, size, steps)), flush=True); return
    if not dry:
        import torch
        if not torch.cuda.is_available(): sys.exit("no CUDA GPU here; --dry-run checks the script on the CPU")
    t_start = time.perf_counter()
    build(folder, dry)
    rows = run_all(args, folder, dry, deadline=t_start + args.budget)
    gib = lambda b: f"{b / 2**30:.2f}"
    what = "float32 on the CPU (dry run, tiny models)" if dry else "float16"
    print(f"\nSDXL {size}², {steps} steps, {what}, random weights")
    print("| configuration | peak VRAM (GiB) | reserved (GiB) | s / step | generate (s) | load (s) | host RSS (GiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r: print(f"| {r['name']} | failed: {r['error']} | | | | | |"); continue
        print(f"| {r['name']} | {gib(r['peak_vram'])} | {gib(r['peak_reserved'])} | {r['s_per_step']:.3f} | "
              f"{r['gen_s']:.2f} | {r['load_s']:.2f} | {gib(r['peak_rss'])} |")
    print(f"(whole script: {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
