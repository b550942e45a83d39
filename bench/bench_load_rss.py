"""Peak resident memory while loading a >= 1 GB safetensors checkpoint (a script, not a timed test).

    python bench/bench_load_rss.py [--gb 1.2] [--dir /tmp/diffuse_nb_rss]

Each loader runs in a fresh subprocess; peak RSS is the kernel's high-water mark (VmHWM) of that process,
baseline (python + torch imported) included. The file is written once and reused (page cache warm)."""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time, torch
from torch import nn
which, path, n, dim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def kb():   # high-water RSS of this address space (ru_maxrss would include the parent's, inherited across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
class Big(nn.Module):
    def __init__(self): super().__init__(); self.layers = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n))
base = kb(); t = time.perf_counter()
if which == "diffuse_nb meta + assign, mmap=False (eager read)":
    from diffuse_nb.weights import load_weights
    with torch.device("meta"): m = Big()
    load_weights(m, path, mmap=False)
elif which == "diffuse_nb meta + assign, mmap=True, every page touched":
    from diffuse_nb.weights import load_weights
    with torch.device("meta"): m = Big()
    load_weights(m, path)
    load_s = time.perf_counter() - t
    total = sum(float(p.sum()) for p in m.parameters())     # page every weight in
elif which == "diffuse_nb load_state_dict":
    from diffuse_nb.weights import load_state_dict
    sd = load_state_dict(path)
elif which == "safetensors.load_file + load_state_dict (fresh module)":
    from safetensors.torch import load_file
    m = Big(); m.load_state_dict(load_file(path))
dt = time.perf_counter() - t
print(json.dumps({"which": which, "base_mib": base / 1024, "peak_mib": kb() / 1024, "seconds": dt,
                  "load_seconds": locals().get("load_s", dt)}))
'''

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--gb", type=float, default=1.2); ap.add_argument("--dir", default="/tmp/diffuse_nb_rss")
    a = ap.parse_args()
    dim = 4096; n = max(1, round(a.gb * 2**30 / (dim * dim * 4)))
    d = Path(a.dir); d.mkdir(parents=True, exist_ok=True); path = d / f"big_{n}x{dim}.safetensors"
    if not path.exists():
        import torch
        from safetensors.torch import save_file
        save_file({f"layers.{i}.weight": torch.randn(dim, dim) for i in range(n)}, path)
    size = path.stat().st_size / 2**20
    print(f"file: {path} = {size:,.0f} MiB ({n} tensors of {dim}x{dim} fp32)")
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL)          # warm the page cache for every loader alike
    for which in ["diffuse_nb meta + assign, mmap=False (eager read)", "diffuse_nb meta + assign, mmap=True, every page touched",
                  "diffuse_nb load_state_dict", "safetensors.load_file + load_state_dict (fresh module)"]:
        r = subprocess.run([sys.executable, "-c", CHILD, which, str(path), str(n), str(dim)], capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{which:58.58s} peak RSS {res['peak_mib']:7,.0f} MiB = {res['peak_mib'] / size:.2f}x file "
              f"(baseline {res['base_mib']:,.0f} MiB; added {(res['peak_mib'] - res['base_mib']) / size:.2f}x) "
              f"load {res['load_seconds']:.2f} s, total {res['seconds']:.2f} s")

if __name__ == "__main__": main()
