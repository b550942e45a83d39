"""Time `diffuse_nb.ltx2_connectors.LTX2TextConnectors` against diffusers' on the same (shared) random weights.

    python bench/bench_ltx2_connectors.py                       # LTX-2.0 connector widths, shortened input
    python bench/bench_ltx2_connectors.py --release 2.3 --seq-len 1024 --full --device cuda --dtype bfloat16

Both models hold *the same* parameter tensors (ours is loaded from the reference's state dict with
`assign=True`), so memory is that of one model. Without `--full` the input projection reads one hidden state
(`text_proj_in_factor=1`) instead of 49: that projection is a single identical GEMM in both implementations, and
the full one needs 2.9 GB (LTX-2.0) or 4.6 GB (LTX-2.3) in float32. Repetitions are interleaved (ours, reference,
ours, …) so machine load hits both alike; the report is the ratio of medians, ours / diffusers.
"""
import argparse, os, statistics, time

import torch

from diffuse_nb.ltx2_connectors import LTX2_CONNECTORS, LTX23_CONNECTORS, LTX2TextConnectors, valid_token_mask
from diffuse_nb.testing import max_abs_err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", choices=("2.0", "2.3"), default="2.0")
    ap.add_argument("--seq-len", type=int, default=256, help="prompt length (multiple of 128)")
    ap.add_argument("--batch", type=int, default=2, help="prompts (2 = negative + positive)")
    ap.add_argument("--full", action="store_true", help="all 49 hidden states into the projection")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors as Ref

    dtype, device = getattr(torch, a.dtype), torch.device(a.device)
    config = dict(LTX2_CONNECTORS if a.release == "2.0" else LTX23_CONNECTORS)
    if not a.full: config["text_proj_in_factor"] = 1
    torch.manual_seed(0)
    ref = Ref(**config).to(device=device, dtype=dtype).eval()
    for p in ref.parameters(): torch.nn.init.normal_(p, std=0.02)
    with torch.device("meta"): ours = LTX2TextConnectors(config)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)     # the same tensors, no copy
    ours.eval()
    n = sum(p.numel() for p in ours.parameters())

    F = config.get("text_proj_in_factor", 49)
    h = torch.randn(a.batch, a.seq_len, 3840 * F, device=device, dtype=dtype)
    lengths = torch.linspace(a.seq_len // 8, a.seq_len, a.batch).long()
    mask = valid_token_mask(lengths, a.seq_len, "left").long().to(device)

    def run(model):
        if device.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode(): out = model(h, mask, padding_side="left")
        if device.type == "cuda": torch.cuda.synchronize()
        return time.perf_counter() - t, out

    run(ours); run(ref)                                                   # warm-up
    times = {"ours": [], "diffusers": []}
    for _ in range(a.reps):
        t, o = run(ours); times["ours"].append(t)
        t, r = run(ref); times["diffusers"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"LTX-{a.release} connectors ({n:,} parameters{'' if a.full else ', projection from 1 layer'}), "
          f"batch {a.batch} × {a.seq_len} tokens, {a.dtype} on {device} "
          f"({a.threads} thread{'s' if a.threads > 1 else ''}), {a.reps} reps")
    print(f"  ours {med['ours']:.3f} s   diffusers {med['diffusers']:.3f} s   "
          f"ratio ours/diffusers = {med['ours'] / med['diffusers']:.3f}")
    print(f"  max|Δ| = {max_abs_err(tuple(o), r):.3g}")


if __name__ == "__main__":
    main()
