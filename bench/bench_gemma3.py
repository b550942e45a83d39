"""One Gemma3-12B decoder layer at full width (hidden 3840, 16 heads / 8 kv heads of 256, MLP 15360), random
weights, float32, CPU: ours vs transformers' `Gemma3DecoderLayer`, same weights, same input, interleaved repetitions.

    python bench/bench_gemma3.py [--threads 2] [--tokens 256] [--reps 5] [--layer-type sliding_attention]

Prints the max |ours - transformers|, each side's median seconds, ours/transformers, the achieved GFLOP/s, and the
projection to a whole 48-layer forward over 1,024 tokens at that rate.
"""
from __future__ import annotations
import argparse, os, statistics, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from diffuse_nb.gemma3 import GEMMA3_12B, Gemma3DecoderLayer, gemma3_text_config, rope_cos_sin, rope_inv_freq
from diffuse_nb.testing import randomize_


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
    ref_cfg = Gemma3TextConfig(**kw); ref_cfg._attn_implementation = "sdpa"
    cfg = gemma3_text_config(kw)
    ref = randomize_(RefLayer(ref_cfg, 0), std=0.02).eval()
    ours = Gemma3DecoderLayer(cfg, 0).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, args.tokens, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(args.tokens)[None]
    ref_cos_sin = Gemma3RotaryEmbedding(ref_cfg)(x, pos, args.layer_type)
    cos_sin = rope_cos_sin(pos, rope_inv_freq(cfg, args.layer_type), x.dtype)

    run = {"ours": lambda: ours(x, cos_sin), "transformers": lambda: ref(x, position_embeddings=ref_cos_sin)}
    with torch.inference_mode():
        err = (run["ours"]() - run["transformers"]()).abs().max().item()
        times = {k: [] for k in run}
        for _ in range(args.reps):                       # interleaved, so machine load hits both alike
            for k, f in run.items():
                t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    C, I, H, Hkv, D, L = 3840, 15360, 16, 8, 256, args.tokens
    flops = 2 * L * (C * (H + 2 * Hkv) * D + H * D * C + 3 * C * I) + 2 * 2 * H * D * L * (L + 1) // 2
    print(f"one Gemma3-12B layer ({args.layer_type}), {L} tokens, fp32, {args.threads} threads, {args.reps} reps")
    print(f"max |ours - transformers| = {err:.3g}")
    for k in run: print(f"{k:13} {med[k] * 1e3:8.1f} ms  ({flops / med[k] / 1e9:5.0f} GFLOP/s)")
    print(f"ours/transformers = {med['ours'] / med['transformers']:.3f}")
    L2 = 1024
    flops_full = 48 * (2 * L2 * (C * (H + 2 * Hkv) * D + H * D * C + 3 * C * I) + 2 * 2 * H * D * L2 * (L2 + 1) // 2)
    print(f"at our rate, a 48-layer forward over 1,024 tokens: ~{flops_full / (flops / med['ours']):.0f} s")


if __name__ == "__main__":
    main()
