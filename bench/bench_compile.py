"""Regional compilation of the full-size SD 2.1 UNet on the CPU: eager vs `compile_repeated_blocks` (fp32, batch 2).

    nice -n 10 python bench/bench_compile.py                  # 64x64 latents (512^2), 2 threads, default variants
    python bench/bench_compile.py --size 16 --reps 2          # quick check of the script
    python bench/bench_compile.py --variants eager,btb,btb+resnet --reps 5
    python bench/bench_compile.py --block --threads 1           # one BasicTransformerBlock (320 wide, 4096 tokens):
                                                               #   eager vs compiled with each option
    python bench/bench_compile.py --profile --variants eager,btb:static   # where a forward's time goes, by kind
                                                               #   of operator, and the most compiling can save

Variants (comma-separated; `eager` and `packed` are the baselines the others are divided by):
    eager            our UNet as written
    packed           eager after optimize.prepack_for_cpu (packed convs, sub-pixel upsampling, channels-last)
    btb              compile_repeated_blocks(unet): BasicTransformerBlock (as diffusers declares)
    t2d              Transformer2DModel instead (norm + proj_in/out + the transformer blocks)
    btb+resnet       BasicTransformerBlock and ResnetBlock2D
    <v>:static       dynamic=False
    <v>:freeze       inductor freezing (weights become constants of the compiled code; no_grad inference only)
    <v>:autotune     mode="max-autotune-no-cudagraphs"
    packed+<v>       the compiled variant on the prepacked UNet

Same process, same weights (one model; the compiled forwards of each variant are swapped in and out), a warm-up
call per variant (its time is the compile time), then `--reps` rounds that run every variant once, interleaved.
Reported: compile time, median forward time, and the median of the per-round ratios to `eager` and to `packed`.
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

BLOCKS = {"btb": ("BasicTransformerBlock",), "t2d": ("Transformer2DModel",),
          "btb+resnet": ("BasicTransformerBlock", "ResnetBlock2D")}
OPTIONS = {"static": dict(dynamic=False), "freeze": dict(options={"freezing": True}),
           "autotune": dict(mode="max-autotune-no-cudagraphs")}


def parse(variant: str):
    "`[packed+]blocks[:opt[:opt]]` -> (packed, block class names, compile kwargs)."
    packed = variant.startswith("packed+")
    name, *opts = variant.removeprefix("packed+").split(":")
    kw = {}
    for o in opts:
        for k, v in OPTIONS[o].items(): kw[k] = {**kw.get(k, {}), **v} if isinstance(v, dict) else v
    return packed, BLOCKS[name], kw


def forwards(model):
    "The per-block forwards compile_repeated_blocks installed (to swap variants in and out)."
    return {m: m.__dict__["forward"] for m in model.modules() if m.__dict__.get("_compiled_region")}


def install(model, saved: dict | None):
    from diffuse_nb.regional_compile import uncompile_repeated_blocks
    uncompile_repeated_blocks(model)
    for m, f in (saved or {}).items(): m.forward, m._compiled_region = f, True


def bench_block(a):
    "One SD 2.1 BasicTransformerBlock of the first level, eager vs each compile option (separate block copies)."
    import copy
    from diffuse_nb.unet import BasicTransformerBlock
    from diffuse_nb.regional_compile import compile_repeated_blocks
    torch.manual_seed(0)
    block = BasicTransformerBlock(320, 5, 64, 1024, upcast_attention=True).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, a.size * a.size, 320, generator=g), torch.randn(2, 77, 1024, generator=g)
    opts = {"eager": None, "default": {}, "static": dict(dynamic=False), "freeze": dict(options={"freezing": True}),
            "autotune": dict(mode="max-autotune-no-cudagraphs")}
    holder, runs, compile_s = torch.nn.ModuleList([block]), {}, {}
    with torch.no_grad():
        ref = block(x, ctx)
        for name, kw in opts.items():
            m = copy.deepcopy(holder)
            if kw is not None: compile_repeated_blocks(m, blocks="BasicTransformerBlock", **kw)
            t0 = time.perf_counter(); out = m[0](x, ctx); compile_s[name] = time.perf_counter() - t0
            runs[name] = m[0]
            print(f"{name}: first call {compile_s[name]:.1f} s, max|out - eager| {(out - ref).abs().max().item():.1e}",
                  flush=True)
        times = {k: [] for k in runs}
        for r in range(a.reps):
            for k, m in runs.items():
                t0 = time.perf_counter(); m(x, ctx); times[k].append(time.perf_counter() - t0)
    med = statistics.median
    print(f"\nBasicTransformerBlock 320 wide, batch 2, {a.size * a.size} tokens, fp32, {a.threads} threads, "
          f"{a.reps} rounds")
    for k in runs:
        ratio = med([p / q for p, q in zip(times[k], times["eager"])])
        print(f"{k:10s} first call {compile_s[k]:7.1f} s  median {med(times[k]) * 1e3:8.1f} ms  /eager {ratio:.3f}")


KINDS = (("convolution", ("convolution",)), ("matrix products", ("addmm", "aten::mm", "bmm", "linear_pointwise")),
         ("attention kernel", ("scaled_dot_product", "flash_attention")))
OTHER = "element-wise, norms, copies"                  # every operator none of KINDS matches: what fusion can remove


def kind(op: str) -> str:
    "The kind of a profiled operator: a convolution, a matrix product, the attention kernel, or everything else."
    return next((k for k, keys in KINDS if any(key in op for key in keys)), OTHER)


def profile_forward(run) -> dict[str, float]:
    "Self CPU seconds of one call of `run` by kind of operator (`kind`), from torch.profiler."
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof: run()
    out = dict.fromkeys([k for k, _ in KINDS] + [OTHER], 0.0)
    for e in prof.key_averages(): out[kind(e.key)] += e.self_cpu_time_total / 1e6
    return out


def report_profiles(profiles: dict[str, dict[str, float]], a) -> None:
    "Print the per-kind seconds of each variant and the bound on what fusing the element-wise work can give."
    print(f"\nSD 2.1 UNet, batch 2, {a.size}x{a.size} latents, fp32, {a.threads} threads: self CPU seconds of one "
          f"forward by kind of operator (torch.profiler; torch {torch.__version__})")
    print(f"{'variant':22s}" + "".join(f"{k:>30s}" for k in next(iter(profiles.values()))) + f"{'total':>9s}")
    for v, p in profiles.items():
        tot = sum(p.values())
        print(f"{v:22s}" + "".join(f"{s:20.2f} s ({s / tot:5.1%})" for s in p.values()) + f"{tot:9.2f}")
    if "eager" in profiles:
        p = profiles["eager"]
        print(f"eager: if compiling removed every element-wise, norm and copy operator and left the convolutions, "
              f"matrix products and attention as fast as they are, compiled / eager would be "
              f"{1 - p[OTHER] / sum(p.values()):.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="latent height and width (64: 512x512 images)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--block", action="store_true", help="time one transformer block instead of the UNet")
    ap.add_argument("--profile", action="store_true",
                    help="after the compile calls, profile one forward of each variant by kind of operator")
    ap.add_argument("--variants", default="eager,packed,btb,btb+resnet,btb:static,packed+btb")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from torch._dynamo import config as dynamo_config
    dynamo_config.recompile_limit = 64                       # several variants share the blocks' code objects
    if a.block: return bench_block(a)
    from bench_unet import random_sd21
    from diffuse_nb.optimize import prepack_for_cpu
    from diffuse_nb.regional_compile import compile_repeated_blocks

    variants = a.variants.split(",")
    plain = random_sd21()
    with torch.device("meta"): packed_unet = type(plain).from_config(plain.config)
    packed_unet.load_state_dict(plain.state_dict(), assign=True)        # the same weight tensors...
    prepack_for_cpu(packed_unet.eval(), example_hw=(a.size, a.size))     # ...its convs packed into copies
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(2, 4, a.size, a.size, generator=g), torch.tensor(999), torch.randn(2, 77, 1024, generator=g)
    model = lambda v: packed_unet if v == "packed" or (v != "eager" and parse(v)[0]) else plain
    compiled, compile_s = {}, {}
    with torch.no_grad():
        ref = plain(x, t, ctx).sample
        print(f"packed: max|out - eager| {(packed_unet(x, t, ctx).sample - ref).abs().max().item():.1e}")
        for v in variants:
            if v in ("eager", "packed"): continue
            _, blocks, kw = parse(v)
            m = model(v); install(m, None)
            compile_repeated_blocks(m, blocks=blocks, **kw)
            t0 = time.perf_counter(); out = m(x, t, ctx).sample; compile_s[v] = time.perf_counter() - t0
            compiled[v] = forwards(m)
            print(f"{v}: first call (compile) {compile_s[v]:.1f} s, max|out - eager| "
                  f"{(out - ref).abs().max().item():.1e}", flush=True)
        if a.profile:
            profiles = {}
            for v in variants:
                m = model(v); install(m, compiled.get(v))
                m(x, t, ctx)                                         # warm (caches, allocator)
                profiles[v] = profile_forward(lambda m=m: m(x, t, ctx))
            return report_profiles(profiles, a)
        times = {v: [] for v in variants}
        for r in range(a.reps):
            for v in variants:
                m = model(v); install(m, compiled.get(v))
                t0 = time.perf_counter(); m(x, t, ctx).sample; times[v].append(time.perf_counter() - t0)
            print(f"round {r + 1}: " + "  ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    med = statistics.median
    print(f"\nSD 2.1 UNet, batch 2, {a.size}x{a.size} latents, fp32, {a.threads} threads, {a.reps} rounds "
          f"(torch {torch.__version__})")
    print(f"{'variant':22s} {'compile s':>9s} {'median s':>9s} {'/eager':>7s} {'/packed':>8s}")
    for v in variants:
        ratio = lambda base: (f"{med([p / q for p, q in zip(times[v], times[base])]):.3f}" if base in times
                              else "-")
        print(f"{v:22s} {compile_s.get(v, 0):9.1f} {med(times[v]):9.2f} {ratio('eager'):>7s} {ratio('packed'):>8s}")


if __name__ == "__main__":
    main()
