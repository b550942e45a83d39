"""Full-size weights with random values: bytes and output PSNR of int8 / NF4 / layerwise casting / GGUF.

    nice -n 10 python bench/quantize_fullsize.py [--size 32] [--threads 1]          # SD 2.1 UNet
    nice -n 10 python bench/quantize_fullsize.py --dit [--blocks 2] [--threads 1]   # LTX-2 DiT blocks

UNet: builds the SD 2.1 UNet on meta, fills it with seeded N(0, 0.02²) weights (norm weights N(1, 0.02²)), runs
one forward (batch 1, `size`² latent, 77×1024 context) in float32 as the reference, then the same forward with
each format applied to a copy. Bytes are those of a float16 copy quantized / cast the same way, over float16.

DiT: the full LTX-2 DiT (19B) does not fit a 24 GiB machine in float32, so this measures a slice that does:
`--blocks` full-width transformer blocks of the released config (video 32 × 128, audio 32 × 64; 386 M parameters
each), seeded N(0, 0.02²) weights (q/k norm weights N(1, 0.02²)), fed the arguments the model passes its blocks
(bench_ltx2_dit.block_inputs: `--video-tokens` video, `--audio-tokens` audio and `--prompt-tokens` prompt tokens,
modulations, RoPE tables, a prompt mask), run one after another. Each format is applied to the same blocks rebuilt from
their seed, so only one model is in memory at a time (GGUF: written with save_gguf, then loaded into blocks built
on meta); bytes are the stored bytes over the float16 bytes of all
parameters (the few unencoded tensors — biases, q/k norms, modulation tables — count at float32). With torchao
installed, its int8 weight-only linears are a row too. PSNR is measured twice against float32: on the
blocks' output (both streams), and on their update, output − input: the residual stream carries the input
through unchanged, so the update is where the formats differ, and its PSNR is the stricter figure.
"""
import argparse, copy, importlib.util, os, tempfile, time
from pathlib import Path

import torch
from torch import nn


def unet_table(args):
    from bench_unet import random_sd21          # the seeded full-size SD 2.1 UNet of bench/bench_unet.py
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


class DiTBlocks(nn.Module):
    "`n` full-width LTX-2 DiT blocks (diffusers keys `transformer_blocks.i.…`) run one after another."
    def __init__(self, cfg, n: int):
        super().__init__()
        from diffuse_nb.ltx2_dit import _block           # the model's own block builder, from its config
        self.transformer_blocks = nn.ModuleList(_block(cfg) for _ in range(n))

    def forward(self, inputs: dict) -> torch.Tensor:
        x, a = inputs["hidden_states"], inputs["audio_hidden_states"]
        for block in self.transformer_blocks:
            x, a = block(**{**inputs, "hidden_states": x, "audio_hidden_states": a})
        return torch.cat([x.flatten(), a.flatten()])       # both streams, one tensor for PSNR


def random_blocks(cfg, n: int, seed: int = 0) -> DiTBlocks:
    from bench_unet import fill_random
    with torch.device("meta"): m = DiTBlocks(cfg, n)
    return fill_random(m, seed)


def dit_table(args):
    from bench_ltx2_dit import block_inputs
    from diffuse_nb.gguf_loader import load_gguf_, save_gguf
    from diffuse_nb.ltx2_dit_blocks import LTX2_DIT, LTX23_DIT, LTX2VideoTransformer3DConfig
    from diffuse_nb.quantize import apply_layerwise_casting, psnr, quantize_, weight_bytes
    cfg = LTX2VideoTransformer3DConfig(**(LTX2_DIT if args.release == "2.0" else LTX23_DIT))
    blocks = random_blocks(cfg, args.blocks)
    n_params = sum(p.numel() for p in blocks.parameters())
    fp16 = 2 * n_params
    g = torch.Generator().manual_seed(1)
    inputs = block_inputs(cfg, 1, args.video_tokens, args.audio_tokens, args.prompt_tokens, g)
    with torch.no_grad():
        t0 = time.perf_counter(); ref = blocks(inputs); t_ref = time.perf_counter() - t0
    print(f"LTX-{args.release} DiT: {args.blocks} full-width blocks, {n_params / 1e6:.1f} M parameters "
          f"(float32 {4 * n_params / 2**30:.2f} GiB, float16 {fp16 / 2**30:.2f} GiB); {args.video_tokens} video, "
          f"{args.audio_tokens} audio, {args.prompt_tokens} prompt tokens; {args.threads} thread(s); "
          f"float32 forward {t_ref:.1f} s")
    start = torch.cat([inputs["hidden_states"].flatten(), inputs["audio_hidden_states"].flatten()])
    print("| format | bytes / float16 | PSNR output (dB) | PSNR update (dB) | convert s | forward s |")
    print("|---|---:|---:|---:|---:|---:|")
    tmp = Path(tempfile.mkdtemp(prefix="dit_gguf_", dir=args.tmp))

    def gguf(kind):
        def apply(make):
            path = save_gguf(make(), tmp / f"blocks-{kind}.gguf", kind)    # the float32 blocks are freed here
            with torch.device("meta"): fresh = DiTBlocks(cfg, args.blocks)
            out = load_gguf_(fresh.eval(), path)
            os.remove(path)
            return out
        return apply

    formats = [(f"cast {d}", lambda make, d=d: apply_layerwise_casting(make(), getattr(torch, d)))
               for d in ("float8_e4m3fn", "float8_e5m2", "float16", "bfloat16")]
    formats += [("int8", lambda make: quantize_(make(), "int8")), ("nf4", lambda make: quantize_(make(), "nf4"))]
    if importlib.util.find_spec("torchao"):
        formats.append(("int8 (torchao)", lambda make: quantize_(make(), "int8", backend="torchao")))
    formats += [(f"GGUF {k}", gguf(k)) for k in ("Q8_0", "Q4_K", "Q4_0")]
    del blocks                                   # rebuilt from its seed per format: one model in memory at a time
    for name, apply in formats:
        if args.only and not any(o in name for o in args.only): continue
        build = []
        def make():
            t0 = time.perf_counter(); m = random_blocks(cfg, args.blocks); build.append(time.perf_counter() - t0)
            return m
        t0 = time.perf_counter(); m = apply(make); t_conv = time.perf_counter() - t0 - sum(build)
        with torch.no_grad():
            t0 = time.perf_counter(); y = m(inputs); t_fwd = time.perf_counter() - t0
        print(f"| {name} | {weight_bytes(m) / fp16:.3f} | {psnr(y, ref):.1f} | {psnr(y - start, ref - start):.1f} "
              f"| {t_conv:.1f} | {t_fwd:.1f} |", flush=True)
        del m, y

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32, help="UNet: latent size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dit", action="store_true", help="LTX-2 DiT blocks instead of the SD 2.1 UNet")
    ap.add_argument("--release", choices=("2.0", "2.3"), default="2.0")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--video-tokens", type=int, default=512)
    ap.add_argument("--audio-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--only", nargs="*", default=None, help="DiT: only formats whose name contains one of these")
    ap.add_argument("--tmp", default=None, help="DiT: folder for the GGUF files (deleted after loading)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    (dit_table if args.dit else unet_table)(args)


if __name__ == "__main__":
    main()
