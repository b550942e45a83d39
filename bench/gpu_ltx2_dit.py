"""One denoising step of the full-size LTX-2 DiT on one GPU, block by block: ours vs diffusers' group offloading.

    python bench/gpu_ltx2_dit.py                                   # 768×512×121, batch 1, groups for 7 GiB
    python bench/gpu_ltx2_dit.py --blocks-per-group 2 --batch 2 --steps 3
    python bench/gpu_ltx2_dit.py --transfer-dtype float8_e4m3fn    # fp8 on the wire, bf16 compute
    python bench/gpu_ltx2_dit.py --dry-run                         # tiny config on the CPU (no GPU needed)

The DiT (18.9 B parameters, random bfloat16 weights; the 48 blocks are copies of one random block, which
changes neither time nor memory) rests in pinned host memory. Ours (`diffuse_nb.ltx2_dit_offload.DiTOffloader`)
streams N blocks at a time to the GPU, the next group copied on a side stream while the current one computes;
N comes from `dit_offload_plan` for `--vram-budget` GiB unless given. Then diffusers' `LTX2VideoTransformer3DModel`
on the same tensors with `enable_group_offload(onload_device, offload_type="block_level",
num_blocks_per_group=N, use_stream=True)`. For each: peak CUDA memory allocated during the timed steps, the
median seconds per step after one warm-up step, and the setup time (host copies, pinning). Needs ~80 GB of host
RAM (the weights, plus one transient copy while they are moved into pinned buffers) and ~5 minutes.
"""
import argparse, gc, os, statistics, sys, time

import torch

from diffuse_nb.ltx2_dit import LTX2_DIT, LTX23_DIT, LTX2VideoTransformer3DModel
from diffuse_nb.ltx2_dit_offload import dit_offload_plan, ltx2_token_counts
from diffuse_nb.testing import max_abs_err

TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
            audio_cross_attention_dim=8, num_layers=3, caption_channels=32, rope_double_precision=False)
GiB = 2 ** 30


@torch.no_grad()
def random_model(config: dict, dtype: torch.dtype, seed: int = 0) -> LTX2VideoTransformer3DModel:
    "Random weights, fast: one block drawn at random and copied into the others; the rest drawn too."
    with torch.device("meta"): model = LTX2VideoTransformer3DModel(**config).to(dtype)   # no memory yet
    model = model.to_empty(device="cpu").eval()                                            # 38 GB in bf16
    g = torch.Generator().manual_seed(seed)
    first = model.transformer_blocks[0]
    for name, p in model.named_parameters():
        if not name.startswith("transformer_blocks.") or name.startswith("transformer_blocks.0."):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for block in model.transformer_blocks[1:]:
        for p, q in zip(block.parameters(), first.parameters()): p.copy_(q)
    return model


def make_inputs(model, tokens: dict, latent: tuple, batch: int, device, dtype, seed: int = 1) -> dict:
    "Forward arguments as LTX2Pipeline passes them (patchified latents, connector output, coordinates)."
    c, g = model.config, torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)
    pw = c.caption_channels if c.use_prompt_embeddings else c.cross_attention_dim
    apw = c.caption_channels if c.use_prompt_embeddings else c.audio_cross_attention_dim
    t = torch.full((batch,), 700.0, device=device)
    F, H, W = latent
    return dict(hidden_states=r(batch, tokens["video"], c.in_channels),
                audio_hidden_states=r(batch, tokens["audio"], c.audio_in_channels),
                encoder_hidden_states=r(batch, tokens["prompt"], pw),
                audio_encoder_hidden_states=r(batch, tokens["prompt"], apw), timestep=t, sigma=t,
                encoder_attention_mask=torch.ones(batch, tokens["prompt"], device=device),
                audio_encoder_attention_mask=torch.ones(batch, tokens["prompt"], device=device),
                num_frames=F, height=H, width=W, fps=24.0, audio_num_frames=tokens["audio"],
                use_cross_timestep=not c.use_prompt_embeddings)


def timed_steps(run, inputs: dict, steps: int, device) -> tuple[list[float], int, tuple]:
    "One warm-up call, then `steps` timed calls: (seconds per call, peak bytes allocated, last output)."
    cuda = device.type == "cuda"
    with torch.inference_mode():
        run(inputs)
        if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter(); out = run(inputs)
            if cuda: torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    return times, peak, tuple(o.float().cpu() for o in out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", choices=("2.0", "2.3"), default="2.0")
    ap.add_argument("--frames", type=int, default=121)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--vram-budget", type=float, default=7.0, help="GiB the plan may use")
    ap.add_argument("--blocks-per-group", type=int, default=None)
    ap.add_argument("--transfer-dtype", default="bfloat16", choices=("bfloat16", "float8_e4m3fn"))
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="tiny 3-layer config on the CPU")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --dry-run to check the script on the CPU")
    device = torch.device("cpu" if a.dry_run else "cuda")
    if a.dry_run: torch.set_num_threads(1)
    dtype = torch.float32 if a.dry_run else torch.bfloat16
    transfer = getattr(torch, a.transfer_dtype) if not a.dry_run else torch.bfloat16

    if a.dry_run:
        config, latent = TINY, (3, 4, 5)
        tokens = dict(video=60, audio=7, prompt=6)
    else:
        config = LTX2_DIT if a.release == "2.0" else LTX23_DIT
        tokens = ltx2_token_counts(a.frames, a.height, a.width)
        latent = ((a.frames - 1) // 8 + 1, a.height // 32, a.width // 32)
    t0 = time.perf_counter()
    model = random_model(config, dtype)
    print(f"LTX-{a.release} DiT, {sum(p.numel() for p in model.parameters()):,} parameters, random {dtype} weights "
          f"({time.perf_counter() - t0:.1f} s); batch {a.batch}: {tokens['video']} video, {tokens['audio']} audio, "
          f"{tokens['prompt']} prompt tokens; {device}", flush=True)
    plan = dit_offload_plan(model, vram_gb=a.vram_budget, device=device, compute_dtype=dtype,
                            transfer_dtype=transfer, blocks_per_group=a.blocks_per_group, tokens=tokens, batch=a.batch)
    print(f"plan: {plan.blocks_per_group} blocks per group, {plan.transfer_dtype} on the wire, "
          f"estimated peak {plan.estimated_peak_bytes / GiB:.2f} GiB", flush=True)
    inputs = make_inputs(model, tokens, latent, a.batch, device, dtype)
    rows = []

    off = plan.offloader(model)
    t0 = time.perf_counter(); off.attach(); setup = time.perf_counter() - t0
    times, peak, ours_out = timed_steps(lambda kw: off(**kw, return_dict=False), inputs, a.steps, device)
    rows.append(("ours (DiTOffloader)", plan.blocks_per_group, str(plan.transfer_dtype).split(".")[-1], peak,
                 statistics.median(times), setup))
    print(f"ours: {statistics.median(times):.2f} s/step, peak {peak / GiB:.2f} GiB", flush=True)
    off.detach()

    if not a.skip_diffusers:
        try:
            from diffusers import LTX2VideoTransformer3DModel as Ref
        except ImportError as e:
            Ref = None; print(f"diffusers not importable ({e}); skipping its row")
        if Ref is not None:
            with torch.device("meta"): ref = Ref(**config)
            ref.load_state_dict(model.state_dict(), strict=True, assign=True)          # the same tensors
            ref.eval()
            del off, model; gc.collect()
            t0 = time.perf_counter()
            if transfer != dtype:
                ref.enable_layerwise_casting(storage_dtype=transfer, compute_dtype=dtype)
            ref.enable_group_offload(onload_device=device, offload_type="block_level",
                                     num_blocks_per_group=plan.blocks_per_group, use_stream=device.type == "cuda")
            setup = time.perf_counter() - t0
            times, peak, ref_out = timed_steps(lambda kw: ref(**kw, return_dict=False), inputs, a.steps, device)
            rows.append(("diffusers enable_group_offload", plan.blocks_per_group, a.transfer_dtype if not a.dry_run
                         else "bfloat16", peak, statistics.median(times), setup))
            print(f"max|ours - diffusers| video {max_abs_err(ours_out[0], ref_out[0]):.3g}, audio "
                  f"{max_abs_err(ours_out[1], ref_out[1]):.3g} (max|video| {ref_out[0].abs().max().item():.3g})")

    print(f"\n| {'implementation':32s} | N | on the wire | peak VRAM GiB | s / step | setup s |")
    print(f"|{'-' * 34}|---|-------------|---------------|----------|---------|")
    for name, n, wire, peak, sec, setup in rows:
        vram = f"{peak / GiB:13.2f}" if device.type == "cuda" else f"{'(CPU)':>13s}"
        print(f"| {name:32s} | {n} | {wire:11s} | {vram} | {sec:8.2f} | {setup:7.1f} |")


if __name__ == "__main__":
    main()
