"""Train the micro model that ships in `diffuse_nb/assets/micro` (the full run of nbs/13_micro.ipynb).

    .venv/bin/python bench/train_micro.py --out DIR                       # the whole recipe, 2 threads
    .venv/bin/python bench/train_micro.py --out DIR --vae-from OLD_MICRO  # keep a trained autoencoder

Prints, and stores in `training_log.json`, the wall-clock and process CPU time of every stage. On a busy
shared machine both stretch: the UNet stage has measured 0.30 s (0.60 CPU-s) and 0.64 s (1.27 CPU-s) a step.
"""
import argparse, json, os, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("diffuse_nb/assets/micro"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=2400)
    ap.add_argument("--unet-steps", type=int, default=7000)
    ap.add_argument("--vae-kw", type=json.loads, default=None, help='JSON, e.g. \'{"crop": 32}\'')
    ap.add_argument("--unet-kw", type=json.loads, default=None, help='JSON, e.g. \'{"batch_size": 32}\'')
    ap.add_argument("--vae-from", type=Path, default=None,
                    help="a micro model folder whose trained VAE is kept (stage 1 skipped, its time carried over)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffuse_nb.micro import train_micro
    cpu0, wall0 = time.process_time(), time.time()
    log = train_micro(args.out, seed=args.seed, n_images=args.n_images, vae_steps=args.vae_steps,
                      unet_steps=args.unet_steps, vae_kw=args.vae_kw, unet_kw=args.unet_kw, vae_from=args.vae_from,
                      overwrite=args.overwrite)
    cpu, wall = time.process_time() - cpu0, time.time() - wall0
    print(json.dumps(log["timing"]))
    print(f"total: {cpu / 60:.1f} CPU-minutes, {wall / 60:.1f} wall-minutes on {args.threads} thread(s); "
          f"quiet-machine estimate (CPU-minutes / 2): {cpu / 120:.1f} min")
    print("VAE round trip:", log["roundtrip"]); print("held-out generations:", log.get("heldout"))


if __name__ == "__main__":
    main()
