"""Estimated vs measured peak RSS of a UNet forward on the CPU, one strategy per fresh process.

    nice -n 10 python bench/memory_plan_rss.py                 # float32, cast float8, int8, nf4
    python bench/memory_plan_rss.py --one int8                 # (the child process for one format)

A mid-size SD-like UNet (channels 128/256, random weights) runs one forward (batch 1, 64×64 latent, 77×256
context) in float32 on 1 thread. Measured: the process's peak RSS during build + encoding + forward minus its RSS
after imports and a warm-up call on a tiny UNet (kernels and thread pools loaded), with the float32 weights freed
and the heap trimmed before the forward. Estimated: `encoded_bytes` (float32 compute) + `unet_activation_bytes`
(float32, counted on meta) + one decoded layer for encoded formats.
"""
import argparse, gc, json, subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FORMATS = ("float32", "float8", "int8", "nf4")


def child(fmt: str) -> dict:
    import ctypes, torch
    torch.set_num_threads(1)
    from diffuse_nb.memory import PeakRSS, process_rss
    from diffuse_nb.memory_plan import component_size, encoded_bytes, unet_activation_bytes
    from diffuse_nb.quantize import apply_layerwise_casting, quantize_
    from diffuse_nb.testing import tiny_unet_config
    from diffuse_nb.unet import UNet2DConditionModel
    libc = ctypes.CDLL("libc.so.6")
    cfg = tiny_unet_config("sd", block_out_channels=(128, 256), cross_attention_dim=256)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 77, 256, generator=g)
    with torch.no_grad():                                               # warm-up: kernels, thread pools
        UNet2DConditionModel.from_config(tiny_unet_config("sd", cross_attention_dim=256)).eval()(x, 10, text)
    gc.collect(); libc.malloc_trim(0)
    base = process_rss()
    with torch.device("meta"): meta = UNet2DConditionModel.from_config(cfg)
    size = component_size(meta)
    m = UNet2DConditionModel.from_config(cfg).eval()
    if fmt == "float8": apply_layerwise_casting(m, torch.float8_e4m3fn)
    elif fmt != "float32": quantize_(m, fmt)
    gc.collect(); libc.malloc_trim(0)
    meter = PeakRSS(reset=True).start()
    with torch.no_grad(): m(x, 10, text)
    peak = meter.stop() - base
    weights = encoded_bytes(meta, fmt, torch.float32)                   # float32 compute on the CPU
    decoded = 0 if fmt == "float32" else 2 * size.leaf_bytes            # one layer decoded in float32
    estimate = weights + unet_activation_bytes(meta, 512, 512, 1, torch.float32) + decoded
    return dict(format=fmt, measured=peak, estimate=estimate)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=FORMATS)
    a = ap.parse_args()
    if a.one: print(json.dumps(child(a.one))); return
    print("| format | estimated MiB | measured MiB | estimate / measured |\n|---|---:|---:|---:|")
    for fmt in FORMATS:
        out = subprocess.run([sys.executable, __file__, "--one", fmt], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {fmt} | {r['estimate'] / 2**20:.1f} | {r['measured'] / 2**20:.1f} | "
              f"{r['estimate'] / r['measured']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
