"""Benchmark: full-size SD 2.1 VAE decode of a 1×4×64×64 latent (→ 512×512), fp32, CPU — diffuse_nb vs diffusers.

Both models hold the same random weights. Runs are interleaved (ours, diffusers, ours, …) in one process and the
median of `--repeats` runs each is reported, with the ratio ours / diffusers (< 1 means we are faster).

    python bench/bench_vae.py                 # 3 repeats, 2 threads
    python bench/bench_vae.py --unfused --nchw   # also time ours without the fused upsample conv / channels-last
    python bench/bench_vae.py --profile       # torch.profiler table of one decode of ours
"""
import argparse, statistics, time

import torch

import torch.nn.functional as F
from diffuse_nb.vae import AutoencoderKL, Decoder
from diffuse_nb.unet import Upsample2D

SD21_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                sample_size=768, scaling_factor=0.18215)


def timed(fn):
    "Wall time, process CPU time (all threads) and result of `fn()`."
    t, c = time.perf_counter(), time.process_time(); out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 -> 512 px)")
    ap.add_argument("--unfused", action="store_true", help="also time ours with the plain upsample + conv")
    ap.add_argument("--nchw", action="store_true", help="also time ours in NCHW layout (channels_last off)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one decode of ours and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import AutoencoderKL as RefAutoencoderKL
    torch.manual_seed(0)
    ref = RefAutoencoderKL(**SD21_VAE).eval()
    ours = AutoencoderKL.from_config(dict(SD21_VAE)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    z = torch.randn(1, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(0))
    print(f"SD 2.1 VAE decode {tuple(z.shape)} -> {args.latent * 8}² px, fp32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")

    def run_ours(): return ours.decode(z).sample
    def run_ref(): return ref.decode(z).sample
    def run_unfused():                          # Upsample2D as interpolate + 3x3 conv instead of 4 phase convs
        fwd = Upsample2D.forward
        Upsample2D.forward = lambda self, h, output_size=None: self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        try: return ours.decode(z).sample
        finally: Upsample2D.forward = fwd

    def run_nchw():
        Decoder.channels_last = False
        try: return ours.decode(z).sample
        finally: Decoder.channels_last = None

    with torch.no_grad():
        if args.profile:
            from torch.profiler import profile, ProfilerActivity
            run_ours()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof: run_ours()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=30))
            return
        runs = {"ours": run_ours, "diffusers": run_ref}
        if args.unfused: runs["ours (unfused upsample)"] = run_unfused
        if args.nchw: runs["ours (NCHW)"] = run_nchw
        times = {k: [] for k in runs}; cpu = {k: [] for k in runs}
        outs = {}
        for r in range(args.repeats + 1):                         # first round is warm-up, not counted
            for name, fn in runs.items():
                t, c, outs[name] = timed(fn)
                if r: times[name].append(t); cpu[name].append(c)
                print(f"  round {r}{' (warm-up)' if r == 0 else ''}: {name:<24} {t:6.2f} s wall, {c:6.2f} s CPU", flush=True)
        err = (outs["ours"] - outs["diffusers"]).abs().max().item()
        print(f"max|ours - diffusers| = {err:.3g} (output range ±{outs['diffusers'].abs().max().item():.3g})")
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"median {k:<24} {v:6.2f} s wall (runs: {', '.join(f'{t:.2f}' for t in times[k])}); "
                  f"CPU median {statistics.median(cpu[k]):.2f} s, min {min(cpu[k]):.2f} s")
        print(f"ratio ours / diffusers = {med['ours'] / med['diffusers']:.3f} (median wall); "
              f"{min(times['ours']) / min(times['diffusers']):.3f} (min wall); "
              f"{statistics.median(cpu['ours']) / statistics.median(cpu['diffusers']):.3f} (median CPU time)")
        for k in med:
            if k.startswith("ours ("):
                print(f"ratio {k} / diffusers = {med[k] / med['diffusers']:.3f} (median wall); "
                      f"{statistics.median(cpu[k]) / statistics.median(cpu['diffusers']):.3f} (median CPU time)")


if __name__ == "__main__":
    main()
