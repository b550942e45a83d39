"""One Gemma3-12B decoder layer at full width: ours vs transformers' `Gemma3DecoderLayer`.

Hidden 3840, 16 query / 8 key-value heads of 256, MLP 15360; random weights, float32, CPU; same weights and input
for both, repetitions interleaved so that machine load hits both alike.

    python bench/bench_gemma3.py [--threads 2] [--tokens 256] [--reps 5] [--layer-type sliding_attention]

Prints the max |ours - transformers|, each side's median wall and CPU seconds and ours/transformers for both, the
GFLOP per wall second and per CPU second (steadier on a shared machine: it counts only the time this process's
threads ran), and what a whole 48-layer forward over 1,024 tokens would take at our rate.
"""
from __future__ import annotations
import argparse, os, statistics, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from diffuse_nb.gemma3 import GEMMA3_12B, Gemma3DecoderLayer, gemma3_text_config, rope_cos_sin, rope_inv_freq
from diffuse_nb.testing import randomize_

C, I, H, HKV, D = 3840, 15360, 16, 8, 256


def layer_flops(L: int) -> int:
    "FLOPs of one layer over `L` tokens: projections and MLP, plus attention over the causal pairs."
    return 2 * L * (C * (H + 2 * HKV) * D + H * D * C + 3 * C * I) + 2 * 2 * H * D * L * (L + 1) // 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layer-type", default="sliding_attention", choices=("sliding_attention", "full_attention"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer as RefLayer, Gemma3RotaryEmbedding

    kw = dict(GEMMA3_12B, num_hidden_layers=1, layer_types=[args.layer_type])
    ref_cfg = Gemma3TextConfig(**kw)
    ref_cfg._attn_implementation = "sdpa"
    cfg = gemma3_text_config(kw)
    ref = randomize_(RefLayer(ref_cfg, 0), std=0.02).eval()
    ours = Gemma3DecoderLayer(cfg, 0).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, args.tokens, C, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(args.tokens)[None]
    ref_cos_sin = Gemma3RotaryEmbedding(ref_cfg)(x, pos, args.layer_type)
    cos_sin = rope_cos_sin(pos, rope_inv_freq(cfg, args.layer_type), x.dtype)

    run = {"ours": lambda: ours(x, cos_sin), "transformers": lambda: ref(x, position_embeddings=ref_cos_sin)}
    wall, cpu = {k: [] for k in run}, {k: [] for k in run}
    with torch.inference_mode():
        err = (run["ours"]() - run["transformers"]()).abs().max().item()       # also the warm-up
        for _ in range(args.reps):
            for k, f in run.items():
                t, c = time.perf_counter(), time.process_time()
                f()
                wall[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
    wall = {k: statistics.median(v) for k, v in wall.items()}
    cpu = {k: statistics.median(v) for k, v in cpu.items()}
    flops = layer_flops(args.tokens)
    print(f"one Gemma3-12B layer ({args.layer_type}), {args.tokens} tokens, fp32, {args.threads} threads, "
          f"{args.reps} reps ({flops / 1e9:.0f} GFLOP)")
    print(f"max |ours - transformers| = {err:.3g}")
    for k in run:
        print(f"{k:13} wall {wall[k] * 1e3:8.1f} ms ({flops / wall[k] / 1e9:4.0f} GFLOP/s)   "
              f"CPU {cpu[k] * 1e3:8.1f} ms ({flops / cpu[k] / 1e9:4.0f} GFLOP per CPU-second)")
    print(f"ours/transformers = {wall['ours'] / wall['transformers']:.3f} (wall), "
          f"{cpu['ours'] / cpu['transformers']:.3f} (CPU)")
    full = 48 * layer_flops(1024)
    rate_wall, rate_cpu = flops / wall["ours"], flops / cpu["ours"] * args.threads
    print(f"48 layers over 1,024 tokens ({full / 1e12:.1f} TFLOP) at our rate: ~{full / rate_wall:.0f} s at this "
          f"wall rate, ~{full / rate_cpu:.0f} s with {args.threads} threads to ourselves")


if __name__ == "__main__":
    main()
