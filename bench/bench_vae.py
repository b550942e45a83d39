"""Benchmark: full-size SD 2.1 VAE decode of a 1×4×64×64 latent (→ 512×512), fp32, CPU — diffuse_nb vs diffusers.

All models hold the same random weights: diffusers' AutoencoderKL, ours plain, and ours after
`optimize.prepack_for_cpu` (copies of the weights, packed). Runs are interleaved (diffusers, ours, ours prepacked, …)
in one process; the median of `--repeats` runs each is reported, with the ratios to diffusers (< 1: we are faster).

    python bench/bench_vae.py                  # 3 repeats, 2 threads
    python bench/bench_vae.py --no-pack        # also ours with prepack_for_cpu(pack_weights=False)
    python bench/bench_vae.py --profile        # torch.profiler table of one decode of ours, prepacked
"""
import argparse, copy, statistics, time

import torch

from diffuse_nb.vae import AutoencoderKL
from diffuse_nb.optimize import prepack_for_cpu

SD21_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=768, scaling_factor=0.18215)


def timed(fn):
    "Wall time, process CPU time (all threads) and result of `fn()`."
    t, c = time.perf_counter(), time.process_time(); out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def build(latent: int, no_pack: bool):
    from diffusers import AutoencoderKL as RefAutoencoderKL
    torch.manual_seed(0)
    ref = RefAutoencoderKL(**SD21_VAE).eval()
    ours = AutoencoderKL.from_config(dict(SD21_VAE)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    hw = (latent * 8, latent * 8)
    models = {"diffusers": ref, "ours": ours, "ours prepacked": prepack_for_cpu(copy.deepcopy(ours), example_hw=hw)}
    if no_pack: models["ours prepack_for_cpu(pack_weights=False)"] = prepack_for_cpu(copy.deepcopy(ours), pack_weights=False)
    return models


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 -> 512 px)")
    ap.add_argument("--no-pack", action="store_true", help="also time ours optimized without weight packing")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one prepacked decode")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = build(args.latent, args.no_pack)
    z = torch.randn(1, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(0))
    print(f"SD 2.1 VAE decode {tuple(z.shape)} -> {args.latent * 8}² px, fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    runs = {k: (lambda m=m: m.decode(z).sample) for k, m in models.items()}
    with torch.no_grad():
        if args.profile:
            from torch.profiler import profile, ProfilerActivity
            runs["ours prepacked"]()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof: runs["ours prepacked"]()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            return
        times = {k: [] for k in runs}; cpu = {k: [] for k in runs}; outs = {}
        for r in range(args.repeats + 1):                         # first round is warm-up, not counted
            for name, fn in runs.items():
                t, c, outs[name] = timed(fn)
                if r: times[name].append(t); cpu[name].append(c)
                print(f"  round {r}{' (warm-up)' if r == 0 else ''}: {name:<42} {t:6.2f} s wall, {c:6.2f} s CPU", flush=True)
    rng = outs["diffusers"].abs().max().item()
    for k in runs:
        if k != "diffusers":
            print(f"max|{k} - diffusers| = {(outs[k] - outs['diffusers']).abs().max().item():.3g} (values up to ±{rng:.3g})")
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = lambda k: statistics.median([a / b for a, b in zip(times[k], times["diffusers"])])
    for k in runs:
        print(f"median {k:<42} {med[k]:6.2f} s wall (runs: {', '.join(f'{t:.2f}' for t in times[k])}); "
              f"CPU median {statistics.median(cpu[k]):.2f} s")
    for k in runs:
        if k == "diffusers": continue
        print(f"ratio {k} / diffusers = {med[k] / med['diffusers']:.3f} (median wall); {paired(k):.3f} (median of "
              f"per-round ratios); {statistics.median(cpu[k]) / statistics.median(cpu['diffusers']):.3f} (median CPU)")
    print(f"ratio ours prepacked / ours plain = {med['ours prepacked'] / med['ours']:.3f} (median wall)")


if __name__ == "__main__":
    main()
