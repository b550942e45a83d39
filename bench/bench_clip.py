"""Full-size CLIP ViT-L/14 text encoder forward: diffuse_nb vs transformers (fp32, CPU, batch 2x77, same random weights).

Run: python bench/bench_clip.py [--rounds 15] [--threads 2] [--config L|H|bigG]
Prints per-model median times and the median over rounds of the per-round ratio ours/transformers
(the two models are interleaved, alternating which goes first, so load from other processes hits both alike).
"""
import argparse, statistics, time
import torch
from transformers import CLIPTextConfig as HFConfig, CLIPTextModel as HFCLIPTextModel
from diffuse_nb.clip import CLIPTextModel, VIT_L_14, VIT_H_14, VIT_BIGG_14

def timed(fn):
    "(wall seconds, process CPU seconds) of one call; CPU time is less sensitive to other processes on a shared machine."
    t, c = time.perf_counter(), time.process_time(); fn()
    return time.perf_counter() - t, time.process_time() - c

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", choices=["L", "H", "bigG"], default="L")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {"L": VIT_L_14, "H": VIT_H_14, "bigG": VIT_BIGG_14}[args.config]

    torch.manual_seed(0)
    ours = CLIPTextModel.from_config(cfg).eval()
    ref = HFCLIPTextModel(HFConfig(**cfg)).eval()
    # transformers >= 5 names a bare CLIPTextModel's weights without the `text_model.` prefix
    ref.load_state_dict({k.removeprefix("text_model."): v for k, v in ours.state_dict().items()}, strict=True)
    print(f"ViT-{args.config}/14 text encoder, attn_implementation={ref.config._attn_implementation}, "
          f"threads={torch.get_num_threads()}, rounds={args.rounds}")

    ids = torch.randint(0, 49406, (2, 77)); ids[:, 0] = 49406; ids[0, 10:] = 49407; ids[1, 20:] = 49407
    with torch.inference_mode():
        err = (ours(ids).last_hidden_state - ref(ids).last_hidden_state).abs().max().item()
        print(f"max|Δ| last_hidden_state = {err:.2e}")
        for _ in range(2): ours(ids); ref(ids)                                # warm-up
        t_ours, t_ref, c_ours, c_ref = [], [], [], []
        for i in range(args.rounds):
            if i % 2 == 0: a = timed(lambda: ours(ids)); b = timed(lambda: ref(ids))
            else: b = timed(lambda: ref(ids)); a = timed(lambda: ours(ids))
            t_ours.append(a[0]); t_ref.append(b[0]); c_ours.append(a[1]); c_ref.append(b[1])
    med, ratio = statistics.median, lambda x, y: med([p / q for p, q in zip(x, y)])
    print(f"ours         wall median {med(t_ours) * 1e3:7.1f} ms  min {min(t_ours) * 1e3:7.1f} ms | CPU median {med(c_ours) * 1e3:7.1f} ms")
    print(f"transformers wall median {med(t_ref) * 1e3:7.1f} ms  min {min(t_ref) * 1e3:7.1f} ms | CPU median {med(c_ref) * 1e3:7.1f} ms")
    print(f"ratio ours/transformers: wall {ratio(t_ours, t_ref):.3f} (median of per-round ratios), "
          f"min/min {min(t_ours) / min(t_ref):.3f}, CPU time {ratio(c_ours, c_ref):.3f}")

if __name__ == "__main__":
    main()
