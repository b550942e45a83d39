"""Benchmark diffuse_nb's UNet2DConditionModel against diffusers' on the full-size SD 2.1 UNet (CPU, fp32).

    python bench/bench_unet.py forward [--rounds 3]   # batch 2, 4x64x64 latent, context 2x77x1024, same weights:
                                                      #   diffusers, ours plain, ours after optimize.prepack_for_cpu
    python bench/bench_unet.py load [--rounds 2]      # from_pretrained(safetensors dir) + first + second forward, peak RSS
    python bench/bench_unet.py profile                # torch.profiler: top ops of one forward, ours and diffusers
    add --threads 1 on a busy machine: one thread has no OpenMP barriers for other processes to stall

Random weights (no download). Timings are interleaved (ours / diffusers / ...) in one process for `forward` and in
alternating fresh processes for `load`; the machine is shared, so each figure is the minimum over rounds, and both
wall-clock and process CPU time are reported (CPU time is less sensitive to other tenants).
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
THREADS = 2


def fill_random(meta_model, seed: int = 0):
    "Materialise a model built on meta with seeded N(0, 0.02²) weights (norm weights N(1, 0.02²)); eval mode."
    m = meta_model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(1.0 if ("norm" in n and n.endswith("weight")) else 0.0, 0.02, generator=g)
    return m.eval()


def random_sd21(seed: int = 0):
    "Our full-size SD 2.1 UNet with seeded random weights (built on meta, then filled)."
    from diffuse_nb.unet import UNet2DConditionModel, SD21_UNET_CONFIG
    with torch.device("meta"): m = UNet2DConditionModel.from_config(SD21_UNET_CONFIG)
    return fill_random(m, seed)


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 64, 64, generator=g), torch.tensor(999), torch.randn(2, 77, 1024, generator=g)


def timed(f):
    t, c = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - t, time.process_time() - c


def models():
    "diffusers' UNet, ours and ours prepacked, all three holding the same random weights."
    from diffusers import UNet2DConditionModel as RefUNet
    from diffuse_nb.unet import UNet2DConditionModel, SD21_UNET_CONFIG
    from diffuse_nb.optimize import prepack_for_cpu
    ours = random_sd21()
    with torch.device("meta"): ref = RefUNet(**SD21_UNET_CONFIG)
    ref.load_state_dict(ours.state_dict(), assign=True); ref.eval()           # the very same weight tensors
    with torch.device("meta"): packed = UNet2DConditionModel.from_config(SD21_UNET_CONFIG)
    packed.load_state_dict(ours.state_dict(), assign=True)
    prepack_for_cpu(packed.eval(), example_hw=(64, 64))                       # packs copies; ours keeps its own
    return ref, ours, packed


def bench_forward(rounds: int):
    ref, ours, packed = models()
    x, t, ctx = inputs()
    runs = {"diffusers": lambda: ref(x, t, ctx).sample, "ours": lambda: ours(x, t, ctx).sample,
            "ours_prepacked": lambda: packed(x, t, ctx).sample}
    wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    with torch.no_grad():
        outs = {k: f() for k, f in runs.items()}                               # warm-up, and the numbers must agree
        errs = {k: (v - outs["diffusers"]).abs().max().item() for k, v in outs.items() if k != "diffusers"}
        print("max|ours - diffusers|:", {k: f"{e:.1e}" for k, e in errs.items()}, flush=True)
        for r in range(rounds):
            for k, f in runs.items():
                _, w, c = timed(f); wall[k].append(w); cpu[k].append(c)
            print(f"round {r + 1}: " + "  ".join(f"{k} {wall[k][-1]:.2f}s/{cpu[k][-1]:.2f}cpu" for k in runs), flush=True)
    res = {k: dict(wall_min=min(wall[k]), cpu_min=min(cpu[k]), wall=wall[k], cpu=cpu[k]) for k in runs}
    med = lambda xs: sorted(xs)[len(xs) // 2]
    for k in ("ours", "ours_prepacked"):
        res[k]["ratio_wall"] = res[k]["wall_min"] / res["diffusers"]["wall_min"]
        res[k]["ratio_cpu"] = res[k]["cpu_min"] / res["diffusers"]["cpu_min"]
        # paired: each round runs the models back to back, so a round's ratio shares that round's machine load
        res[k]["paired_cpu_median"] = med([a / b for a, b in zip(cpu[k], cpu["diffusers"])])
        res[k]["paired_wall_median"] = med([a / b for a, b in zip(wall[k], wall["diffusers"])])
        print(f"{k:15s} / diffusers: min-of-rounds wall {res[k]['ratio_wall']:.3f}  cpu {res[k]['ratio_cpu']:.3f} | "
              f"median of per-round ratios wall {res[k]['paired_wall_median']:.3f}  cpu {res[k]['paired_cpu_median']:.3f} "
              f"(min wall {res[k]['wall_min']:.2f}s vs {res['diffusers']['wall_min']:.2f}s)")
    print("peak RSS %.2f GiB" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))
    return res


def save_random_sd21(d: Path):
    from safetensors.torch import save_file
    from diffuse_nb.unet import SD21_UNET_CONFIG
    if (d / "diffusion_pytorch_model.safetensors").exists(): return d
    d.mkdir(parents=True, exist_ok=True)
    m = random_sd21()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "diffusion_pytorch_model.safetensors"))
    cfg = dict(SD21_UNET_CONFIG, _class_name="UNet2DConditionModel", _diffusers_version="0.42.1")
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def load_child(which: str, d: str):
    "Run in a fresh process: load, two forwards; print one JSON line."
    torch.set_num_threads(THREADS)
    x, t, ctx = inputs()
    if which == "diffusers":
        from diffusers import UNet2DConditionModel as RefUNet
        _ = RefUNet                                                            # import cost is not load cost
        load = lambda: RefUNet.from_pretrained(d).eval()
        fwd = lambda m: m(x, t, ctx).sample
    else:
        from diffuse_nb.unet import UNet2DConditionModel
        from diffuse_nb.optimize import prepack_for_cpu
        load = (lambda: UNet2DConditionModel.from_pretrained(d)) if which == "ours" else \
               (lambda: prepack_for_cpu(UNet2DConditionModel.from_pretrained(d)))
        fwd = lambda m: m(x, t, ctx).sample
    def touch(m):                                                              # read every weight once: pays any lazy mmap reads
        s = 0.0
        for p in m.parameters(): s += float(p.detach().reshape(-1)[:: 1024].sum()) if p.numel() and not p.is_mkldnn else 0.0
        for c in m.modules():
            for name in ("_packed_weight", "_packed_phases"):
                if name in c.__dict__: s += float(c.__dict__[name].to_dense().reshape(-1)[::1024].sum())
        return s
    with torch.no_grad():
        m, t_load, c_load = timed(load)
        _, t_touch, c_touch = timed(lambda: touch(m))
        _, t_f1, c_f1 = timed(lambda: fwd(m))
        _, t_f2, c_f2 = timed(lambda: fwd(m))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(dict(which=which, load=t_load, touch=t_touch, first=t_f1, second=t_f2, cpu_load=c_load, cpu_first=c_f1,
                          cpu_second=c_f2, peak_rss_gib=rss)))


def bench_load(rounds: int, d: str | None):
    d = Path(d) if d else Path(tempfile.mkdtemp(prefix="bench_unet_"))
    save_random_sd21(d)
    res = {k: [] for k in ("ours", "ours_prepacked", "diffusers")}
    for r in range(rounds):
        for which in res:
            out = subprocess.run([sys.executable, __file__, "_load_child", which, str(d), str(THREADS)],
                                 capture_output=True, text=True)
            if out.returncode: print(out.stderr[-3000:]); raise SystemExit(out.returncode)
            row = json.loads(out.stdout.strip().splitlines()[-1]); res[which].append(row)
            print(f"round {r + 1} {which:15s} load {row['load']:.2f}s  touch {row['touch']:.2f}s  first fwd {row['first']:.2f}s  second {row['second']:.2f}s  "
                  f"peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
    summary = {}
    for k, rows in res.items():
        summary[k] = dict(load=min(r["load"] for r in rows), load_first=min(r["load"] + r["first"] for r in rows),
                          load_touch=min(r["load"] + r["touch"] for r in rows),
                          # what loading really costs: load + first forward - a warm forward
                          load_overhead=min(r["load"] + r["first"] - r["second"] for r in rows),
                          peak_rss_gib=max(r["peak_rss_gib"] for r in rows))
    for k in ("ours", "ours_prepacked"):
        s, b = summary[k], summary["diffusers"]
        print(f"{k:15s} / diffusers: load+read every weight {s['load_touch']:.2f}/{b['load_touch']:.2f} = {s['load_touch'] / b['load_touch']:.3f}; "
              f"load+first forward {s['load_first']:.2f}/{b['load_first']:.2f} = {s['load_first'] / b['load_first']:.3f}; "
              f"load overhead (load+first-second) {s['load_overhead']:.2f}/{b['load_overhead']:.2f} = "
              f"{s['load_overhead'] / b['load_overhead']:.3f}; bare load call {s['load']:.2f}/{b['load']:.2f}; "
              f"peak RSS {s['peak_rss_gib']:.2f} vs {b['peak_rss_gib']:.2f} GiB")
    return summary


def profile():
    from torch.profiler import profile as prof, ProfilerActivity
    ref, ours, packed = models()
    x, t, ctx = inputs()
    for name, f in (("ours", lambda: ours(x, t, ctx)), ("ours_prepacked", lambda: packed(x, t, ctx)),
                    ("diffusers", lambda: ref(x, t, ctx))):
        with torch.no_grad():
            f()
            with prof(activities=[ProfilerActivity.CPU]) as p: f()
        print(f"== {name}\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load_child":
        THREADS = int(sys.argv[4]) if len(sys.argv) > 4 else THREADS
        load_child(sys.argv[2], sys.argv[3]); raise SystemExit
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["forward", "load", "profile"], nargs="?", default="forward")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the random safetensors checkpoint (load); reused if present")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--threads", type=int, default=THREADS, help="intra-op threads (1 is steadiest on a busy machine)")
    a = ap.parse_args()
    THREADS = a.threads
    torch.set_num_threads(THREADS)
    res = {"forward": lambda: bench_forward(a.rounds), "load": lambda: bench_load(a.rounds, a.dir), "profile": profile}[a.what]()
    if a.json and res is not None: Path(a.json).write_text(json.dumps(res, indent=2))
