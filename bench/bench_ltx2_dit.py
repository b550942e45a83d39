"""Time one full-width LTX-2 DiT block (`diffuse_nb.ltx2_dit`) against diffusers' on the same random weights.

    python bench/bench_ltx2_dit.py                                  # LTX-2.0 block, 256 video / 32 audio tokens
    python bench/bench_ltx2_dit.py --release 2.3 --video-tokens 1024 --reps 5
    python bench/bench_ltx2_dit.py --profile                        # + torch.profiler tables of both
    python bench/bench_ltx2_dit.py --gemm                           # BLAS vs oneDNN matrix products only

One block of the released width (video 32 × 128, audio 32 × 64, 386 M parameters) in float32 on the CPU, fed a
short full-size token sequence. Both blocks hold *the same* parameter tensors (ours is loaded from the
reference's state dict with `assign=True`), so memory is that of one block (1.5 GB). The modulation inputs and
RoPE tables are made once, as the model's forward would, and passed to both blocks. Ours runs twice: as built
(`nn.Linear`, PyTorch's BLAS) and with `use_onednn_linear` (oneDNN's matrix product on the same weights).
Repetitions are interleaved, the order rotated each time (ours, ours + oneDNN, reference; ours + oneDNN, reference,
ours; …), so machine load hits all alike; the report is the ratio of medians of wall time, ours / diffusers
(and of the process's CPU time, steadier on a busy machine).
"""
import argparse, os, statistics, time

import torch

import torch.nn.functional as F

from diffuse_nb.ltx2_dit_blocks import LTX2_DIT, LTX23_DIT, LTX2VideoTransformer3DConfig, LTX2VideoTransformerBlock
from diffuse_nb.ltx2_dit_offload import use_onednn_linear
from diffuse_nb.rope import audio_coords, rope_cos_sin, video_coords
from diffuse_nb.testing import max_abs_err


def block_inputs(cfg, B, Nv, Na, L, generator):
    "The arguments the model passes to a block: tokens, prompts, modulations, RoPE tables, prompt mask."
    r = lambda *s: torch.randn(*s, generator=generator)
    D, Da = cfg.inner_dim, cfg.audio_inner_dim
    rows, audio_rows = (9 if cfg.cross_attn_mod else 6), (9 if cfg.audio_cross_attn_mod else 6)
    kw = dict(theta=cfg.rope_theta, double_precision=cfg.rope_double_precision, layout=cfg.rope_type)
    vc = video_coords(B, 1, Nv // 16, 16) if Nv % 16 == 0 else video_coords(B, 1, 1, Nv)
    ac = audio_coords(B, Na)
    H, Ha = cfg.num_attention_heads, cfg.audio_num_attention_heads
    mask = torch.zeros(B, 1, L); mask[:, :, : L // 4] = -10000.0                     # a quarter is padding
    args = dict(hidden_states=r(B, Nv, D), audio_hidden_states=r(B, Na, Da), encoder_hidden_states=r(B, L, D),
                audio_encoder_hidden_states=r(B, L, Da), temb=r(B, 1, rows * D) * 0.1,
                temb_audio=r(B, 1, audio_rows * Da) * 0.1, temb_ca_scale_shift=r(B, 1, 4 * D) * 0.1,
                temb_ca_audio_scale_shift=r(B, 1, 4 * Da) * 0.1, temb_ca_gate=r(B, 1, D) * 0.1,
                temb_ca_audio_gate=r(B, 1, Da) * 0.1,
                video_rotary_emb=rope_cos_sin(vc, D, (20, 2048, 2048), num_heads=H, **kw),
                audio_rotary_emb=rope_cos_sin(ac, Da, (20,), num_heads=Ha, **kw),
                ca_video_rotary_emb=rope_cos_sin(vc[:, 0:1], cfg.audio_cross_attention_dim, (20,), num_heads=H, **kw),
                ca_audio_rotary_emb=rope_cos_sin(ac[:, 0:1], cfg.audio_cross_attention_dim, (20,), num_heads=Ha,
                                                 **kw),
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask)
    if cfg.cross_attn_mod or cfg.audio_cross_attn_mod:
        args.update(temb_prompt=r(B, 1, 2 * D) * 0.1, temb_prompt_audio=r(B, 1, 2 * Da) * 0.1)
    return args


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", choices=("2.0", "2.3"), default="2.0")
    ap.add_argument("--video-tokens", type=int, default=256)
    ap.add_argument("--audio-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables of one call of each")
    ap.add_argument("--gemm", action="store_true", help="only time BLAS vs oneDNN matrix products of DiT shapes")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    if a.gemm: return gemm_table(a.reps, a.threads)
    from diffusers.models.transformers.transformer_ltx2 import LTX2VideoTransformerBlock as RefBlock

    cfg = LTX2VideoTransformer3DConfig(**(LTX2_DIT if a.release == "2.0" else LTX23_DIT))
    kwargs = dict(dim=cfg.inner_dim, num_attention_heads=cfg.num_attention_heads,
                  attention_head_dim=cfg.attention_head_dim, cross_attention_dim=cfg.cross_attention_dim,
                  audio_dim=cfg.audio_inner_dim, audio_num_attention_heads=cfg.audio_num_attention_heads,
                  audio_attention_head_dim=cfg.audio_attention_head_dim,
                  audio_cross_attention_dim=cfg.audio_cross_attention_dim, video_gated_attn=cfg.gated_attn,
                  video_cross_attn_adaln=cfg.cross_attn_mod, audio_gated_attn=cfg.audio_gated_attn,
                  audio_cross_attn_adaln=cfg.audio_cross_attn_mod, rope_type=cfg.rope_type,
                  perturbed_attn=cfg.perturbed_attn)
    with torch.device("meta"):
        ref, ours, fast = RefBlock(**kwargs), LTX2VideoTransformerBlock(**kwargs), LTX2VideoTransformerBlock(**kwargs)
    ref = ref.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for m in (ours, fast): m.load_state_dict(ref.state_dict(), strict=True, assign=True)   # same tensors
    ours.eval(); use_onednn_linear(fast.eval())
    n = sum(p.numel() for p in ours.parameters())
    inputs = block_inputs(cfg, a.batch, a.video_tokens, a.audio_tokens, a.prompt_tokens, g)

    def run(block):
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode(): out = block(**inputs)
        return (time.perf_counter() - t, time.process_time() - c), out

    blocks = {"ours": ours, "ours + oneDNN linear": fast, "diffusers": ref}
    for b in blocks.values(): run(b)                                      # warm-up
    times, cpu, outs = {k: [] for k in blocks}, {k: [] for k in blocks}, {}
    names = list(blocks)
    for rep in range(a.reps):                                             # rotate the order every repetition
        for k in names[rep % 3:] + names[:rep % 3]:
            (t, c), outs[k] = run(blocks[k]); times[k].append(t); cpu[k].append(c)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"LTX-{a.release} DiT block ({n:,} parameters), batch {a.batch}: {a.video_tokens} video, "
          f"{a.audio_tokens} audio, {a.prompt_tokens} prompt tokens, float32 on cpu "
          f"({a.threads} thread{'s' if a.threads > 1 else ''}), {a.reps} interleaved reps")
    for k in ("ours", "ours + oneDNN linear"):
        print(f"  {k:21s} {med[k]:7.3f} s   diffusers {med['diffusers']:7.3f} s   "
              f"ratio ours/diffusers = {med[k] / med['diffusers']:.3f}   "
              f"(CPU time {med_cpu[k] / med_cpu['diffusers']:.3f})   "
              f"max|Δ| = {max_abs_err(outs[k], outs['diffusers']):.3g}")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        for name, block in (("ours", ours), ("diffusers", ref)):
            with profile(activities=[ProfilerActivity.CPU]) as prof: run(block)
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def gemm_table(reps: int, threads: int):
    "Median time of F.linear (BLAS) and oneDNN's linear for the DiT's shapes, interleaved."
    print(f"float32 x (M, K) @ W (N, K)ᵀ, {threads} thread(s), median of {reps}: BLAS / oneDNN time, oneDNN GFLOP/s")
    for M in (32, 128, 256, 1024):
        for K, N in ((4096, 4096), (4096, 16384), (16384, 4096), (2048, 2048)):
            x, w, b = torch.randn(M, K), torch.randn(N, K) * 0.02, torch.zeros(N)
            fs = {"blas": lambda: F.linear(x, w, b),
                  "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")}
            ts = {k: [] for k in fs}
            for _ in range(reps):
                for k, f in fs.items():
                    t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in ts.items()}
            print(f"  M={M:5d} K={K:5d} N={N:5d}   BLAS/oneDNN = {med['blas'] / med['onednn']:5.2f}   "
                  f"{2 * M * K * N / med['onednn'] / 1e9:6.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
