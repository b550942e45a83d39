"""Full-size LTX-2 pipeline pieces on one GPU under the `low` and `medium` memory profiles, beside diffusers.

    python bench/gpu_ltx2_pipeline.py                   # 768×512×121, LTX-2.3 DiT, low + medium + diffusers
    python bench/gpu_ltx2_pipeline.py --profiles low --skip-diffusers --skip-vae
    python bench/gpu_ltx2_pipeline.py --dry-run         # tiny configs on the CPU (checks the script, no GPU)

What one guided denoising step costs (LTX-2.3's recipe: cond, uncond, STG and modality-isolated passes) when
the DiT (18.9 B parameters, random bfloat16 weights; its 48 blocks are copies of one random block, which changes
neither time nor memory) is placed by `diffuse_nb.ltx2_pipeline.LTX2ComponentManager` exactly as
`txt2vid_ltx2` places it for each profile: `medium` streams one block at a time and batches cond/uncond, `low`
streams one block at a time and runs the four passes one after another. Then diffusers'
`LTX2VideoTransformer3DModel` on the same tensors with `enable_group_offload(block_level, 1 block per
group, use_stream=True)` and the passes run as LTX2Pipeline runs them (cond/uncond batched). Last, the
full-size video VAE decodes the 768×512×121 latents with each profile's tiles (ours) and with diffusers' `enable_tiling()`.
For each row: peak CUDA memory allocated, peak process RSS (host RAM), seconds per step (median of `--steps`
after one warm-up step) and the setup time (host copies, pinning). Target: `low` <= 8 GiB of VRAM.
Needs ~90 GB of host RAM and a few minutes (well under 8 on an H100/H200).
"""
import argparse, gc, os, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_ltx2_dit import TINY, make_inputs, random_model  # noqa: E402  (same random DiT and inputs)

from diffuse_nb.ltx2 import _vae_tiles  # noqa: E402
from diffuse_nb.ltx2_dit import LTX23_DIT  # noqa: E402
from diffuse_nb.ltx2_dit_offload import ltx2_token_counts  # noqa: E402
from diffuse_nb.ltx2_pipeline import LTX2ComponentManager, ltx2_memory_profile  # noqa: E402
from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video  # noqa: E402
from diffuse_nb.memory import PeakRSS, ram_info  # noqa: E402

GiB = 2 ** 30
TINY_VAE = dict(latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
                layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
                decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False),
                downsample_type=("spatial",), upsample_residual=(False,), upsample_factor=(1,), patch_size=1)


def guided_step(run, one: dict, two: dict, sequential: bool, stg_block: int):
    "The four DiT passes of one LTX-2.3 guided step: cond/uncond (batched or one by one), STG, isolated."
    if sequential: run(one); run(one)
    else: run(two)
    run({**one, "spatio_temporal_guidance_blocks": [stg_block]})
    run({**one, "isolate_modalities": True})


def measure(fn, steps: int, device) -> tuple[float, int, int]:
    "One warm-up call, then `steps` timed calls: (median seconds, peak CUDA bytes, peak RSS bytes)."
    cuda = device.type == "cuda"
    with torch.inference_mode():
        fn()
        if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        rss, times = PeakRSS(interval=0.01).start(), []
        for _ in range(steps):
            t0 = time.perf_counter(); fn()
            if cuda: torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak_rss = rss.stop()
    return statistics.median(times), torch.cuda.max_memory_allocated() if cuda else 0, peak_rss


def ours_dit(model, name: str, gpu: str, ram_gb: float, one: dict, two: dict, steps: int, device, stg: int):
    "One profile's row: the DiT placed by LTX2ComponentManager as txt2vid_ltx2 places it."
    p = ltx2_memory_profile(name=name, gpu=gpu, ram_gb=ram_gb)
    mgr = LTX2ComponentManager({}, p)
    t0 = time.perf_counter(); mgr.add("transformer", model); setup = time.perf_counter() - t0
    run = lambda kw: mgr.runner("transformer")(**kw, return_dict=False)
    sec, vram, rss = measure(lambda: guided_step(run, one, two, p.cfg_mode == "sequential", stg), steps, device)
    mgr.drop("transformer"); gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()
    what = f"ours, {name} (DiT ×{p.blocks_per_group}, {p.cfg_mode}, pinned={p.pin_memory})"
    return what, vram, rss, sec, setup


def diffusers_dit(model, config: dict, one: dict, two: dict, steps: int, device, stg: int):
    "diffusers' DiT with block-level group offloading (1 block per group), passes as LTX2Pipeline runs them."
    from diffusers import LTX2VideoTransformer3DModel as Ref
    with torch.device("meta"): ref = Ref(**config)
    ref.load_state_dict(model.state_dict(), strict=True, assign=True)                 # the same tensors
    ref.eval()
    t0 = time.perf_counter()
    ref.enable_group_offload(onload_device=device, offload_type="block_level", num_blocks_per_group=1,
                             use_stream=device.type == "cuda")
    setup = time.perf_counter() - t0
    run = lambda kw: ref(**kw, return_dict=False)
    sec, vram, rss = measure(lambda: guided_step(run, one, two, False, stg), steps, device)
    del ref; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()
    return "diffusers enable_group_offload (1 block, batched)", vram, rss, sec, setup


def vae_rows(vae_config: dict, latent: tuple, names, gpu: str, ram_gb: float, device, dtype, skip_diffusers):
    "Tiled decode of the full-size latents: ours with each profile's tiles, diffusers with its default tiles."
    with torch.device("meta"): vae = AutoencoderKLLTX2Video.from_config(vae_config)
    vae = vae.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in vae.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    vae = vae.to(device, dtype).eval()
    z = torch.randn(1, vae.config.latent_channels, *latent, generator=g).to(device, dtype)
    rows = []
    for name in names:
        p = ltx2_memory_profile(name=name, gpu=gpu, ram_gb=ram_gb)
        with _vae_tiles(vae, p):
            sec, vram, rss = measure(lambda: vae.decode(z, progress=False), 1, device)
        what = f"ours, VAE decode, {name} tiles {p.vae_tiles[0]} px / {p.vae_tiles[2]} frames"
        rows.append((what, vram, rss, sec, 0.0))
    if not skip_diffusers:
        from diffusers import AutoencoderKLLTX2Video as RefVAE
        with torch.device("meta"): ref = RefVAE(**vae_config)
        ref.load_state_dict(vae.state_dict(), strict=True, assign=True)
        ref.eval().enable_tiling()
        sec, vram, rss = measure(lambda: ref.decode(z, return_dict=False), 1, device)
        rows.append(("diffusers VAE decode, enable_tiling()", vram, rss, sec, 0.0))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["low", "medium"],
                    choices=("high", "medium", "low", "very_low"))
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--steps", type=int, default=1, help="timed guided steps after one warm-up step")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --dry-run to check the script on the CPU")
    device, gpu = (torch.device("cpu"), "cpu") if a.dry_run else (torch.device("cuda"), "cuda")
    if a.dry_run: torch.set_num_threads(1)
    dtype = torch.float32 if a.dry_run else torch.bfloat16
    ram_gb = ram_info()[0]
    if a.dry_run:
        config, vae_config, latent = {**TINY, **{k: v for k, v in LTX23_DIT.items() if k != "rope_type"}}, \
            TINY_VAE, (3, 4, 5)
        tokens, stg = dict(video=60, audio=7, prompt=6), 1
    else:
        config, vae_config, stg = LTX23_DIT, {}, 28
        tokens = ltx2_token_counts(a.frames, a.height, a.width)
        latent = ((a.frames - 1) // 8 + 1, a.height // 32, a.width // 32)
    t0 = time.perf_counter()
    model = random_model(config, dtype)
    print(f"LTX-2.3 DiT, {sum(p.numel() for p in model.parameters()):,} parameters, random {dtype} weights "
          f"({time.perf_counter() - t0:.1f} s); {tokens['video']} video, {tokens['audio']} audio, "
          f"{tokens['prompt']} prompt tokens; {device}; {ram_gb:.0f} GiB RAM available", flush=True)
    one = make_inputs(model, tokens, latent, 1, device, dtype)
    two = make_inputs(model, tokens, latent, 2, device, dtype)
    rows = []
    for name in a.profiles:
        rows.append(ours_dit(model, name, gpu, ram_gb, one, two, a.steps, device, stg))
        print(rows[-1], flush=True)
    if not a.skip_diffusers:
        rows.append(diffusers_dit(model, config, one, two, a.steps, device, stg))
        print(rows[-1], flush=True)
    del model, one, two; gc.collect()
    if not a.skip_vae:
        rows += vae_rows(vae_config, latent, a.profiles, gpu, ram_gb, device, dtype, a.skip_diffusers)

    print(f"\n{a.width}×{a.height}×{a.frames}, one guided step = 4 DiT passes (LTX-2.3 recipe)")
    print(f"| {'what':64s} | peak VRAM GiB | peak RSS GiB | s / step | setup s |")
    print(f"|{'-' * 66}|---------------|--------------|----------|---------|")
    for what, vram, rss, sec, setup in rows:
        v = f"{vram / GiB:13.2f}" if device.type == "cuda" else f"{'(CPU)':>13s}"
        print(f"| {what:64s} | {v} | {rss / GiB:12.2f} | {sec:8.2f} | {setup:7.1f} |")


if __name__ == "__main__":
    main()
