"""Full-size SD 2.1 UNet (random weights): weight bytes and output PSNR of int8 / NF4 / layerwise casting.

    nice -n 10 python bench/quantize_fullsize.py [--size 32] [--threads 1]

Builds the UNet on meta, fills it with seeded N(0, 0.02²) weights (norm weights N(1, 0.02²)), runs one forward
(batch 1, `size`² latent, 77×1024 context) in float32 as the reference, then the same forward with each
format applied to a copy. Bytes are those of a float16 copy quantized / cast the same way, over float16.
"""
import argparse, copy, time

import torch

from bench_unet import random_sd21          # the seeded full-size SD 2.1 UNet of bench/bench_unet.py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffuse_nb.quantize import apply_layerwise_casting, psnr, quantize_, weight_bytes
    unet = random_sd21()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, args.size, args.size, generator=g), torch.tensor(999)
    ctx = torch.randn(1, 77, 1024, generator=g)
    with torch.no_grad(): ref = unet(x, t, ctx).sample
    fp16 = weight_bytes(copy.deepcopy(unet).half())
    print(f"SD 2.1 UNet: float32 {weight_bytes(unet) / 2**30:.3f} GiB, float16 {fp16 / 2**30:.3f} GiB; "
          f"batch 1, latent {args.size}x{args.size}, {args.threads} thread(s)")
    print("| format | bytes / float16 | PSNR vs float32 (dB) | convert s | forward s |")
    print("|---|---:|---:|---:|---:|")
    formats = [("int8", lambda m: quantize_(m, "int8")), ("nf4", lambda m: quantize_(m, "nf4"))] + [
        (f"cast {d}", lambda m, d=d: apply_layerwise_casting(m, getattr(torch, d)))
        for d in ("float8_e4m3fn", "float8_e5m2", "float16", "bfloat16")]
    for name, apply in formats:
        small = apply(copy.deepcopy(unet).half()) if not name.endswith("float16") else None
        ratio = 1.0 if small is None else weight_bytes(small) / fp16
        del small
        m = copy.deepcopy(unet)
        t0 = time.perf_counter(); apply(m); t_conv = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter(); y = m(x, t, ctx).sample; t_fwd = time.perf_counter() - t0
        print(f"| {name} | {ratio:.3f} | {psnr(y, ref):.1f} | {t_conv:.1f} | {t_fwd:.1f} |", flush=True)
        del m


if __name__ == "__main__":
    main()
