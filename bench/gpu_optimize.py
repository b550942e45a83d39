"""GPU measurement of weight formats (layerwise casting, int8, NF4) alone and with block offloading, beside diffusers.

    python bench/gpu_optimize.py                      # SDXL UNet at 1024², batch 2, float16 compute
    python bench/gpu_optimize.py --reps 3 --json out.json
    python bench/gpu_optimize.py --smoke              # CPU, tiny config: checks the script itself

Full-size SDXL UNet with seeded random weights (built on meta, filled on the CPU in float16), one forward of
batch 2 (guidance batched), 128×128 latent, 77×2048 context. For every row: median seconds per call over `--reps`
after one warm-up, the CUDA allocator's peak during a call, the weights' bytes, and the PSNR of the output against
the float16 resident UNet. Rows:

- ours: float16 resident; layerwise casting float8_e4m3fn; int8; NF4 — each resident and with `BlockOffloader`
  (weights streamed block by block from pinned host memory, the next block prefetched on a side stream);
- diffusers (same weights, loaded by key): float16 resident; `apply_layerwise_casting` float8_e4m3fn;
  `enable_group_offload(block_level, use_stream=True)`, alone and with casting; bitsandbytes NF4 / torchao int8
  weight-only when those packages import.

Budget: under 8 minutes on one GPU (about 3 on an H100-class card).
"""
import argparse, copy, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffuse_nb.memory import BlockOffloader                                           # noqa: E402
from diffuse_nb.quantize import apply_layerwise_casting, psnr, quantize_, weight_bytes  # noqa: E402
from diffuse_nb.testing import tiny_unet_config                                          # noqa: E402
from diffuse_nb.unet import UNet2DConditionModel, SDXL_UNET_CONFIG                       # noqa: E402

DEV = "cuda"


def sync():
    if DEV == "cuda": torch.cuda.synchronize()


def random_unet(config, dtype=torch.float16, seed=0):
    with torch.device("meta"): m = UNet2DConditionModel.from_config(config)
    m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02 + (1.0 if "norm" in n and n.endswith("weight") else 0))
    return m.to(dtype).eval()


def inputs(config, size, B=2, dtype=torch.float16):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEV, dtype)
    kw = {}
    if config.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = dict(text_embeds=mk(B, 1280 if size > 64 else 32), time_ids=mk(B, 6))
    return (mk(B, 4, size, size), torch.tensor(500, device=DEV), mk(B, 77, config["cross_attention_dim"])), kw


def timed(model, args, kw, reps):
    with torch.no_grad():
        out = model(*args, **kw)[0]                              # warm-up
        sync()
        if DEV == "cuda": torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(reps):
            t = time.perf_counter(); out = model(*args, **kw)[0]; sync(); times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() if DEV == "cuda" else 0
    return out.float().cpu(), statistics.median(times), peak


def ours_rows(base, args, kw, reps):
    fmts = {"float16": lambda m: m, "cast e4m3fn": lambda m: apply_layerwise_casting(m, torch.float8_e4m3fn),
            "int8": lambda m: quantize_(m, "int8"), "nf4": lambda m: quantize_(m, "nf4")}
    for name, apply in fmts.items():
        for offload in (False, True):
            m = apply(copy.deepcopy(base))                       # encoded on the CPU, then placed
            nbytes = weight_bytes(m)
            off = BlockOffloader(m, device=DEV).attach() if offload else None
            if off is None: m.to(DEV)
            yield f"ours {name}" + (" + block offload" if offload else ""), nbytes, *timed(m, args, kw, reps)
            if off is not None: off.detach()
            del m; clear()


def diffusers_rows(base, config, args, kw, reps, dtype):
    try: from diffusers import UNet2DConditionModel as Ref
    except ImportError: return
    def ref():
        with torch.device("meta"): r = Ref(**config)
        r.load_state_dict(base.state_dict(), assign=True)
        return r.to(dtype).eval()
    rows = {"float16": lambda r: r.to(DEV),
            "cast e4m3fn": lambda r: (r.enable_layerwise_casting(torch.float8_e4m3fn, dtype), r.to(DEV))[1],
            "group offload": lambda r: (r.enable_group_offload(DEV, offload_type="block_level",
                                                               num_blocks_per_group=1, use_stream=True), r)[1],
            "cast e4m3fn + group offload": lambda r: (r.enable_layerwise_casting(torch.float8_e4m3fn, dtype),
                                                      r.enable_group_offload(DEV, offload_type="block_level",
                                                                             num_blocks_per_group=1,
                                                                             use_stream=True), r)[2]}
    for name, apply in rows.items():
        if "offload" in name and DEV != "cuda": continue
        try: r = apply(ref())
        except Exception as e: print(f"diffusers {name}: skipped ({type(e).__name__}: {e})"); continue
        yield f"diffusers {name}", weight_bytes(r), *timed(r, args, kw, reps)
        del r; clear()


def clear():
    import gc; gc.collect()
    if DEV == "cuda": torch.cuda.empty_cache()


def main():
    global DEV
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny config: check the script runs")
    a = ap.parse_args()
    if a.smoke: DEV = "cpu"
    elif not torch.cuda.is_available(): sys.exit("needs a CUDA GPU (or --smoke)")
    config = dict(tiny_unet_config("sdxl")) if a.smoke else dict(SDXL_UNET_CONFIG)
    size = 16 if a.smoke else 128
    dtype = torch.float32 if a.smoke else torch.float16
    t0 = time.perf_counter()
    base = random_unet(config, dtype)
    args, kw = inputs(config, size, dtype=dtype)
    print(f"UNet ready in {time.perf_counter() - t0:.0f} s; {weight_bytes(base) / 2**30:.2f} GiB")
    rows, ref_out = [], None
    print("| run | weights GiB | s / call | peak GiB | PSNR vs float16 (dB) |\n|---|---:|---:|---:|---:|")
    for gen in (ours_rows(base, args, kw, a.reps), diffusers_rows(base, config, args, kw, a.reps, dtype)):
        for name, nbytes, out, sec, peak in gen:
            if ref_out is None: ref_out = out
            p = psnr(out, ref_out)
            rows.append(dict(run=name, weights_gib=nbytes / 2**30, seconds=sec, peak_gib=peak / 2**30, psnr=p))
            print(f"| {name} | {nbytes / 2**30:.2f} | {sec:.3f} | {peak / 2**30:.2f} | {p:.1f} |", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.json: Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
