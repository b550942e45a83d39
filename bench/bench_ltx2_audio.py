"""Time LTX-2's sound path — audio VAE decoder, LTX-2.0 vocoder, LTX-2.3 vocoder with BWE — against diffusers'.

    python bench/bench_ltx2_audio.py                          # 2 s of audio, float32, 2 CPU threads
    python bench/bench_ltx2_audio.py --seconds 5.04 --device cuda --dtype bfloat16 --reps 10

Full-size models with random weights. Ours and the reference hold *the same* parameter tensors (ours is built on
`meta` and adopts the reference's state dict with `assign=True`), so memory is that of one model per component.
Repetitions are interleaved (ours, reference, ours, …) so machine load hits both alike; the report is the ratio
of medians, ours / diffusers, of wall time and of process CPU time, and the largest difference between the outputs.
"""
import argparse, os, statistics, time

import torch

from diffuse_nb.ltx2_audio import AutoencoderKLLTX2Audio
from diffuse_nb.ltx2_vocoder import LTX2Vocoder, LTX2VocoderWithBWE
from diffuse_nb.testing import max_abs_err

LTX2_VOCODER = dict(in_channels=128, hidden_channels=1024, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4],
                    upsample_factors=[6, 5, 2, 2, 2], resnet_kernel_sizes=[3, 7, 11], resnet_dilations=[[1, 3, 5]] * 3,
                    act_fn="leaky_relu", leaky_relu_negative_slope=0.1, antialias=False, final_act_fn="tanh",
                    final_bias=True, output_sampling_rate=24000)


def shared(ours_cls, ref, config):
    "Our model on `meta`, then adopting the reference's tensors (no copy)."
    with torch.device("meta"): ours = ours_cls.from_config(config)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ours.eval()


def randomize(ref, std):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std + (name.endswith("weight") and p.ndim == 1))
    return ref


def bench(name, ours, ref, x, reps, device):
    "Interleaved timings of `ours(x)` and `ref(x)`: medians of wall and process CPU time, ratio, max difference."
    def run(model):
        if device.type == "cuda": torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        with torch.inference_mode(): out = model(x)
        if device.type == "cuda": torch.cuda.synchronize()
        return time.perf_counter() - t, time.process_time() - c, out
    run(ours); run(ref)                                                     # warm-up
    wall, cpu, outs = {"ours": [], "diffusers": []}, {"ours": [], "diffusers": []}, {}
    for _ in range(reps):
        for label, m in (("ours", ours), ("diffusers", ref)):
            w, c, outs[label] = run(m); wall[label].append(w); cpu[label].append(c)
    med = lambda d: {k: statistics.median(v) for k, v in d.items()}
    w, c = med(wall), med(cpu)
    print(f"{name:31} {tuple(x.shape)} -> {tuple(outs['ours'].shape)}: wall ours {w['ours']:.2f} s / diffusers "
          f"{w['diffusers']:.2f} s = {w['ours'] / w['diffusers']:.2f}; CPU time ratio "
          f"{c['ours'] / c['diffusers']:.2f}; max|Δ| = {max_abs_err(outs['ours'], outs['diffusers']):.2g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="audio duration (LTX-2 default clip: 5.04)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--parts", default="vae,vocoder,bwe", help="comma-separated: vae, vocoder, bwe")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    from diffusers import AutoencoderKLLTX2Audio as RefVAE
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder as RefVocoder, LTX2VocoderWithBWE as RefBWE

    dtype, device, parts = getattr(torch, a.dtype), torch.device(a.device), a.parts.split(",")
    L = round(a.seconds * 25)                                         # audio latent frames (LTX2Pipeline)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 8, L, 16, generator=g).to(device, dtype)
    mel = torch.randn(1, 2, 4 * L - 3, 64, generator=g).to(device, dtype) * 2 - 4   # log-mel-like values
    print(f"{a.seconds} s of audio: {L} latent frames, {4 * L - 3} mel frames; {a.device}, {a.dtype}, "
          f"{a.threads} threads, {a.reps} interleaved repetitions")
    if "vae" in parts:
        ref = randomize(RefVAE(), 0.02).to(device, dtype).eval()
        ours = shared(AutoencoderKLLTX2Audio, ref, dict(ref.config))
        bench("audio VAE decode", _Decode(ours), _Decode(ref), z, a.reps, device)
        del ours, ref
    if "vocoder" in parts:
        ref = randomize(RefVocoder(**LTX2_VOCODER), 0.01).to(device, dtype).eval()
        bench("LTX-2.0 vocoder (24 kHz)", shared(LTX2Vocoder, ref, LTX2_VOCODER), ref, mel, a.reps, device)
        del ref
    if "bwe" in parts:
        ref = randomize(RefBWE(), 0.01).eval()
        with torch.no_grad():
            ref.mel_stft.mel_basis.uniform_(0, 0.05); ref.mel_stft.stft_fn.forward_basis.normal_(0, 0.05)
        ref = ref.to(device, dtype)
        bench("LTX-2.3 vocoder + BWE (48 kHz)", shared(LTX2VocoderWithBWE, ref, dict(ref.config)), ref, mel,
              a.reps, device)


class _Decode(torch.nn.Module):
    "`model.decode(z).sample` as a callable module."
    def __init__(self, vae): super().__init__(); self.vae = vae
    def forward(self, z): return self.vae.decode(z).sample


if __name__ == "__main__": main()
