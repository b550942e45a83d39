"""GPU micro-benchmark of the offloaders in `diffuse_nb.offload` (needs one CUDA GPU; not run by the tests).

    python bench/gpu_offload.py                 # SD 2.1 at 768² and SDXL at 1024², float16, batch 1
    python bench/gpu_offload.py --kinds sd21 --reps 5 --json out.json

For each full-size UNet (random weights, float16) it measures one forward call, as the `extreme` profile makes it
(batch 1: guidance runs one half at a time), in these placements:

- resident:              the whole UNet on the GPU (the reference);
- model offload:         `ModelOffloader.load()` + forward + `unload()` (the `gpu_poor` way, per call);
- block, no prefetch:    `BlockOffloader(prefetch=False)`: copy a block, run it, drop it;
- block, prefetch:       `BlockOffloader(prefetch=True)`: the next block copies on a side stream during compute;
- block, prefetch, pageable: the same from ordinary (not pinned) host memory;
- (SDXL) block, split 0.5 GiB: blocks split as `ComponentManager` does by default.

Reported: median seconds per call over `--reps` (after one warm-up call), the CUDA allocator's peak during a call
(`torch.cuda.max_memory_allocated`), and the largest difference from the resident output (0 expected: the same
kernels on the same weights). Host-to-device bandwidth from pinned and pageable memory is measured first, for
context. Runs in about a minute on a recent GPU (budget: 3 minutes).
"""
import argparse, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffuse_nb.offload import BlockOffloader, ModelOffloader, _prediction
from diffuse_nb.memory import GiB        # noqa: E402
from diffuse_nb.unet import UNet2DConditionModel, SD21_UNET_CONFIG, SDXL_UNET_CONFIG  # noqa: E402

KINDS = {"sd21": (SD21_UNET_CONFIG, 768, 1024), "sdxl": (SDXL_UNET_CONFIG, 1024, 2048)}
DEV = "cuda"                                      # --smoke: "cpu" with tiny configs, to check the script itself


def sync():
    if DEV == "cuda": torch.cuda.synchronize()


def bandwidth(gib: float = 1.0) -> dict:
    "Host-to-device GB/s from pinned and from pageable memory (one `gib`-GiB copy each, after a warm-up)."
    out = {}
    for name, pin in (("pinned", True), ("pageable", False)):
        host = torch.empty(int(gib * GiB), dtype=torch.uint8, pin_memory=pin)
        dev = torch.empty_like(host, device="cuda")
        dev.copy_(host, non_blocking=pin); torch.cuda.synchronize()
        t = time.perf_counter(); dev.copy_(host, non_blocking=pin); torch.cuda.synchronize()
        out[name] = gib * GiB / (time.perf_counter() - t) / 1e9
        del host, dev
    torch.cuda.empty_cache()
    return out


def random_unet(cfg: dict) -> UNet2DConditionModel:
    "The full-size UNet with random float16 weights, built directly on the GPU."
    with torch.device("meta"): unet = UNet2DConditionModel.from_config(cfg)
    unet = unet.half() if DEV == "cuda" else unet
    unet = unet.to_empty(device=DEV).eval()                                 # float16 straight away
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias"): p.zero_()
            elif p.ndim == 1: p.fill_(1.0)                                   # norm scales
            else: p.normal_(0.0, 0.02)
    return unet


def inputs(kind: str) -> tuple:
    cfg, px, width = KINDS[kind]
    h = dict(device=DEV, dtype=torch.float16 if DEV == "cuda" else torch.float32)
    x, text = torch.randn(1, 4, px // 8, px // 8, **h), torch.randn(1, 77, width, **h)
    pooled = cfg.get("projection_class_embeddings_input_dim", 0) - 6 * cfg.get("addition_time_embed_dim", 0)
    add = dict(text_embeds=torch.randn(1, pooled, **h), time_ids=torch.tensor([[px, px, 0, 0, px, px]], **h))
    return x, text, (add if kind == "sdxl" else None)


def timed(call, reps: int) -> tuple[float, int, torch.Tensor]:
    "Median seconds of `call()` over `reps` (after one warm-up) and the allocator's peak bytes during one call."
    out = call(); sync()
    if DEV == "cuda": torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        sync(); t = time.perf_counter()
        out = call(); sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), torch.cuda.max_memory_allocated() if DEV == "cuda" else 0, out


def bench_kind(kind: str, reps: int) -> list[dict]:
    cfg, px, _ = KINDS[kind]
    unet = random_unet(cfg)
    x, text, add = inputs(kind)
    forward = lambda: _prediction(unet(x, 10, text, added_cond_kwargs=add))
    rows = []
    def record(name, call, setup=None, teardown=None):
        if setup: setup()
        if DEV == "cuda": torch.cuda.empty_cache()
        s, peak, out = timed(call, reps)
        rows.append(dict(kind=kind, placement=name, seconds=s, peak_gib=peak / GiB,
                         max_abs_diff=float((out.float() - ref.float()).abs().max()) if ref is not None else 0.0))
        if teardown: teardown()
        print(f"{kind} {px}²  {name:30s} {s * 1e3:8.1f} ms   peak {peak / GiB:6.2f} GiB   "
              f"diff {rows[-1]['max_abs_diff']:.1e}", flush=True)
    ref = None
    with torch.inference_mode():
        ref = forward()
        record("resident", forward)
        mo = ModelOffloader(unet, device=DEV)                                # weights to pinned host chunks
        record("model offload (load+run+unload)", lambda: (mo.load(), forward(), mo.unload())[1])
        mo.detach()                                                              # back on the GPU
        split = [("block, no prefetch", dict(prefetch=False)), ("block, prefetch", dict(prefetch=True)),
                 ("block, prefetch, pageable", dict(prefetch=True, pin_memory=False))]
        if kind == "sdxl":
            split.append(("block, prefetch, split 0.5 GiB", dict(prefetch=True, max_block_bytes=GiB // 2)))
        for name, kw in split:
            off = BlockOffloader(unet, device=DEV, **kw).attach()
            record(name + f" ({len(off.blocks) - 1} blocks)", forward)
            off.detach()
    del unet
    if DEV == "cuda": torch.cuda.empty_cache()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", nargs="+", default=["sd21", "sdxl"], choices=list(KINDS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=str, default=None, help="write the rows here (never overwrites)")
    ap.add_argument("--smoke", action="store_true", help="tiny UNets on the CPU: checks the script, measures nothing")
    args = ap.parse_args()
    t0, bw = time.perf_counter(), {}
    if args.smoke:
        global DEV
        from diffuse_nb.testing import tiny_unet_config
        DEV = "cpu"
        KINDS.update(sd21=(tiny_unet_config("sd"), 128, 32), sdxl=(tiny_unet_config("sdxl"), 128, 64))
    elif not torch.cuda.is_available(): sys.exit("bench/gpu_offload.py needs a CUDA GPU; none is available here")
    else:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
        bw = bandwidth()
        print(f"host -> device: pinned {bw['pinned']:.1f} GB/s, pageable {bw['pageable']:.1f} GB/s")
    rows = [r for kind in args.kinds for r in bench_kind(kind, args.reps)]
    for kind in args.kinds:
        base = next(r for r in rows if r["kind"] == kind and r["placement"] == "resident")
        for r in rows:
            if r["kind"] == kind: r["time_vs_resident"] = r["seconds"] / base["seconds"]
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        path = Path(args.json)
        if path.exists(): sys.exit(f"{path} exists; not overwriting it")
        name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke test)"
        path.write_text(json.dumps(dict(device=name, bandwidth_gb_s=bw, rows=rows), indent=1))


if __name__ == "__main__":
    main()
