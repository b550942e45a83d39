"""Benchmark: LTX-2 video VAE decode (full-size LTX-2.0 config, random weights, fp32, CPU) — diffuse_nb vs diffusers.

Decodes a small full-width latent, 1×128×2×4×4 by default (→ 9 frames of 128×128), through the full decoder
(528 M parameters). All decoders share the same weight tensors (the `prepack_for_cpu` variant adds oneDNN-packed
copies of the weights it runs packed, made in its second call). Runs are interleaved (diffusers, ours, ours
packed, …) in one process; the first and second calls are reported, then the median of `--repeats` runs each with
wall and process CPU time and the ratio ours / diffusers (< 1: we are faster).

    python bench/bench_ltx2_vae.py                  # 3 repeats, 2 threads
    python bench/bench_ltx2_vae.py --threads 1 --repeats 5
    python bench/bench_ltx2_vae.py --profile        # torch.profiler tables of one decode of each, then exit
"""
import argparse, statistics, time

import torch

from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video

LTX2_VAE = dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8)  # + defaults


def timed(fn):
    "Wall time, process CPU time (all threads) and result of `fn()`."
    t, c = time.perf_counter(), time.process_time(); out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def build(seed: int = 0):
    "diffusers' and our full-size LTX-2.0 video VAE with the same decoder weights (encoders stay on `meta`)."
    from diffusers import AutoencoderKLLTX2Video as RefVAE
    from diffusers.models.autoencoders.autoencoder_kl_ltx2 import LTX2VideoDecoder3d as RefDecoder
    with torch.device("meta"): ref, ours = RefVAE(**LTX2_VAE), AutoencoderKLLTX2Video.from_config(LTX2_VAE)
    c = ref.config
    torch.manual_seed(seed)                       # diffusers' own (PyTorch default) initialisation
    ref.decoder = RefDecoder(in_channels=c.latent_channels, out_channels=c.out_channels,
                             block_out_channels=c.decoder_block_out_channels,
                             spatio_temporal_scaling=c.decoder_spatio_temporal_scaling,
                             layers_per_block=c.decoder_layers_per_block, upsample_type=c.upsample_type,
                             patch_size=c.patch_size, patch_size_t=c.patch_size_t, is_causal=c.decoder_causal,
                             inject_noise=c.decoder_inject_noise, timestep_conditioning=c.timestep_conditioning,
                             upsample_residual=c.upsample_residual, upsample_factor=c.upsample_factor,
                             spatial_padding_mode=c.decoder_spatial_padding_mode).eval()
    ours.decoder.load_state_dict(ref.decoder.state_dict(), strict=True, assign=True)   # shares the tensors
    return ref, ours.eval()


def packed_twin(ref):
    "Our model once more on the same weights, with `prepack_for_cpu` (it adds packed copies as calls need them)."
    with torch.device("meta"): other = AutoencoderKLLTX2Video.from_config(LTX2_VAE)
    other.decoder.load_state_dict(ref.decoder.state_dict(), strict=True, assign=True)
    return other.eval().prepack_for_cpu()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, nargs=3, default=(2, 4, 4), metavar=("F", "H", "W"),
                    help="latent frames, height, width (default 2 4 4 -> 9 frames of 128x128)")
    ap.add_argument("--no-packed", action="store_true", help="skip ours with prepack_for_cpu")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables of one decode each, exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ref, ours = build()
    packed = None if args.no_packed else packed_twin(ref)
    z = torch.randn(1, 128, *args.latent, generator=torch.Generator().manual_seed(0))
    print(f"LTX-2 video VAE decode {tuple(z.shape)}, fp32, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; built in {time.perf_counter() - t0:.1f} s", flush=True)

    runs = {"diffusers": lambda: ref.decode(z).sample, "ours": lambda: ours.decode(z, progress=False).sample}
    if packed is not None: runs["ours, prepack_for_cpu"] = lambda: packed.decode(z, progress=False).sample
    with torch.no_grad():
        if args.profile:
            from torch.profiler import profile
            for name, fn in runs.items():
                fn(); fn()                                              # prepack_for_cpu packs in the 2nd call
                with profile(record_shapes=False) as p: fn()
                print(f"--- {name}\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
            return
        outs, first, second = {}, {}, {}
        for name, fn in runs.items():                # first and second calls (prepack_for_cpu packs in the second)
            first[name], _, outs[name] = timed(fn)
        for name, fn in runs.items(): second[name], _, _ = timed(fn)
        shape = tuple(outs["diffusers"].shape)
        for name, out in outs.items():
            print(f"{name}: first call {first[name]:.2f} s, second {second[name]:.2f} s; output {tuple(out.shape)}, max|Δ| vs diffusers = "
                  f"{(out - outs['diffusers']).abs().max().item():.3g} (values up to {out.abs().max().item():.2f})")
        times = {name: [] for name in runs}
        for r in range(args.repeats):
            for name, fn in runs.items():
                wall, cpu, _ = timed(fn); times[name].append((wall, cpu))
                print(f"  repeat {r + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    base_w = statistics.median(w for w, _ in times["diffusers"])
    base_c = statistics.median(c for _, c in times["diffusers"])
    print(f"\ndecode {tuple(z.shape)} -> {shape}, {torch.get_num_threads()} threads; wall time of the first and "
          f"second calls, then the median of {args.repeats} interleaved repeats:")
    print("| decoder | 1st call | 2nd call | median wall | ratio wall | median CPU | ratio CPU |")
    print("|---|---|---|---|---|---|---|")
    for name, ts in times.items():
        w, c = statistics.median(x for x, _ in ts), statistics.median(y for _, y in ts)
        print(f"| {name} | {first[name]:.2f} s | {second[name]:.2f} s | {w:.2f} s | {w / base_w:.2f} | {c:.2f} s "
              f"| {c / base_c:.2f} |")


if __name__ == "__main__":
    main()
