"""Throughput of diffuse_nb's pure-Python tokenizers against transformers' and the `tokenizers` library's (Rust).

    python bench/bench_tokenizers.py [--prompts 1000] [--rounds 5]

A realistic prompt mix (`prompt_corpus`, random prompts of 1–90 words, edge cases excluded), encoded
(a) one call per prompt, the way a pipeline calls the tokenizer, and (b) as one batch of all prompts:
- `CLIPTokenizer` vs transformers' `CLIPTokenizer`: padding to 77, truncation, return_tensors="pt" (SD's call);
  also ours with a cold word cache (cleared before every round);
- `BPETokenizer` vs transformers' `GemmaTokenizerFast` on a tiny Gemma-layout tokenizer: LTX-2's call (left padding
  to 128, truncation, "pt"), ours with a cold cache (in Gemma's layout a whole prompt is one BPE word);
- `BPETokenizer.encode` vs `tokenizers.Tokenizer.encode` for the Metaspace and Gemma layouts, cold cache.
Ours and the reference run interleaved in one process on the same prompts; best of `rounds`; ratios ours/reference
(> 1: ours faster).
"""
import argparse, json, tempfile, time
from pathlib import Path

import torch
from diffuse_nb.clip_tokenizer import CLIPTokenizer, clip_vocab_from_bpe, prompt_corpus, _EDGE_PROMPTS
from diffuse_nb.bpe_tokenizer import BPETokenizer, make_gemma_style_tokenizer, train_reference_bpe


def rate(fn, prompts, per_prompt: bool, clear=None) -> float:
    if clear is not None: clear()
    t = time.perf_counter()
    if per_prompt:
        for p in prompts: fn(p)
    else: fn(prompts)
    return len(prompts) / (time.perf_counter() - t)


def compare(name, ours_fn, ref_fn, prompts, rounds, clear):
    "Interleaved best-of-`rounds` prompts/s: ours warm, ours cold (cache cleared), reference; one call per prompt."
    res = {"warm": [], "cold": [], "ref": [], "warm_batch": [], "ref_batch": []}
    for _ in range(rounds):
        res["cold"].append(rate(ours_fn, prompts, True, clear)); res["warm"].append(rate(ours_fn, prompts, True))
        res["ref"].append(rate(ref_fn, prompts, True))
        res["warm_batch"].append(rate(ours_fn, prompts, False)); res["ref_batch"].append(rate(ref_fn, prompts, False))
    b = {k: max(v) for k, v in res.items()}
    print(f"{name:34} per prompt: ours {b['warm']:7,.0f} (cold {b['cold']:7,.0f})  ref {b['ref']:7,.0f}  "
          f"ratio {b['warm'] / b['ref']:.2f}x (cold {b['cold'] / b['ref']:.2f}x) | one batch: ours "
          f"{b['warm_batch']:7,.0f}  ref {b['ref_batch']:7,.0f}  ratio {b['warm_batch'] / b['ref_batch']:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import transformers
    transformers.logging.set_verbosity_error()
    prompts = prompt_corpus(args.prompts + len(_EDGE_PROMPTS), seed=1)[len(_EDGE_PROMPTS):]
    work = Path(tempfile.mkdtemp())
    vocab, merges = clip_vocab_from_bpe()
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (work / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (work / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    ours, ref = CLIPTokenizer.from_pretrained(work), transformers.CLIPTokenizer.from_pretrained(work)
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    o_fn, r_fn = (lambda p: ours(p, **kw)), (lambda p: ref(p, **kw))
    assert torch.equal(o_fn(prompts).input_ids, r_fn(prompts)["input_ids"]), "ids differ from the reference"
    n_tok = sum(len(ours.encode(p)) for p in prompts) / len(prompts)
    print(f"{len(prompts)} prompts, mean {n_tok:.1f} CLIP tokens (before truncation); best of {args.rounds} "
          f"rounds, prompts/s")
    compare("CLIPTokenizer, SD's call", o_fn, r_fn, prompts, args.rounds, ours.cache.clear)

    gdir = make_gemma_style_tokenizer(work / "gemma")
    g, g_ref = BPETokenizer.from_pretrained(gdir), transformers.GemmaTokenizerFast.from_pretrained(gdir)
    kw = dict(padding="max_length", max_length=128, truncation=True, padding_side="left", return_tensors="pt")
    o_fn, r_fn = (lambda p: g(p, **kw)), (lambda p: g_ref(p, **kw))
    assert torch.equal(o_fn(prompts).input_ids, r_fn(prompts)["input_ids"]), "ids differ from the reference"
    compare("BPETokenizer (Gemma), LTX-2's call", o_fn, r_fn, prompts, args.rounds, g.cache.clear)

    from tokenizers import Tokenizer
    for style in ("metaspace", "gemma"):
        path = train_reference_bpe(work / style / "tokenizer.json", style=style)
        sp, sp_ref = BPETokenizer.from_file(path), Tokenizer.from_file(str(path))
        o_fn, r_fn = (lambda p: sp.encode(p)), (lambda p: sp_ref.encode(p).ids)
        assert [o_fn(p) for p in prompts] == [r_fn(p) for p in prompts]
        cold, ref_r = [], []
        for _ in range(args.rounds):
            cold.append(rate(o_fn, prompts, True, sp.cache.clear)); ref_r.append(rate(r_fn, prompts, True))
        print(f"BPETokenizer.encode ({style:9}) cold cache: ours {max(cold):7,.0f}  tokenizers {max(ref_r):7,.0f}  "
              f"ratio {max(cold) / max(ref_r):.2f}x")


if __name__ == "__main__":
    main()
