"""Throughput of diffuse_nb's pure-Python CLIPTokenizer vs transformers' (Rust-backed) CLIPTokenizer.

    python bench/bench_tokenizers.py [--prompts 1000] [--rounds 5]

A realistic prompt mix (`prompt_corpus`, random prompts of 1–90 words, edge cases excluded), encoded
(a) one call per prompt with padding to 77, truncation and return_tensors="pt" (how a pipeline calls it), and
(b) as one batch of all prompts. Ours and the reference run interleaved in one process; best of `rounds`.
Also reports ours with a cold word cache (cleared before every round), and the SentencePiece-style BPETokenizer
(Gemma-style tokenizer.json trained here, where a whole prompt is one BPE word) against the `tokenizers` library.
"""
import argparse, gzip, json, tempfile, time
from pathlib import Path

import torch
from diffuse_nb.tokenizers import BPETokenizer, CLIPTokenizer, clip_vocab_from_bpe, prompt_corpus, train_reference_bpe, _EDGE_PROMPTS


def reference_tokenizer():
    import transformers
    from transformers import CLIPTokenizer as Ref
    transformers.logging.set_verbosity_error()
    vocab, merges = clip_vocab_from_bpe()
    d = Path(tempfile.mkdtemp())
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return Ref.from_pretrained(d, pad_token="<|endoftext|>")


def rate(fn, prompts, per_prompt: bool) -> float:
    t = time.perf_counter()
    if per_prompt:
        for p in prompts: fn(p)
    else: fn(prompts)
    return len(prompts) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    prompts = prompt_corpus(args.prompts + len(_EDGE_PROMPTS), seed=1)[len(_EDGE_PROMPTS):]
    ours, ref = CLIPTokenizer.from_bpe_file(), reference_tokenizer()
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    o_fn, r_fn = (lambda p: ours(p, **kw)), (lambda p: ref(p, **kw))
    assert torch.equal(o_fn(prompts).input_ids, r_fn(prompts)["input_ids"]), "ids differ from the reference"
    res = {k: [] for k in ("ours", "ref", "ours_batch", "ref_batch", "ours_cold")}
    for _ in range(args.rounds):
        res["ours"].append(rate(o_fn, prompts, True)); res["ref"].append(rate(r_fn, prompts, True))
        res["ours_batch"].append(rate(o_fn, prompts, False)); res["ref_batch"].append(rate(r_fn, prompts, False))
        ours.cache.clear(); res["ours_cold"].append(rate(o_fn, prompts, True))
    best = {k: max(v) for k, v in res.items()}
    n_tok = sum(len(ours.encode(p)) for p in prompts) / len(prompts)
    print(f"{len(prompts)} prompts, mean {n_tok:.1f} tokens (before truncation); best of {args.rounds} rounds, prompts/s")
    print(f"one call per prompt : ours {best['ours']:8,.0f}   transformers {best['ref']:8,.0f}   ratio {best['ours'] / best['ref']:.2f}x")
    print(f"one batched call    : ours {best['ours_batch']:8,.0f}   transformers {best['ref_batch']:8,.0f}   ratio {best['ours_batch'] / best['ref_batch']:.2f}x")
    print(f"per prompt, cold word cache: ours {best['ours_cold']:8,.0f}   ratio {best['ours_cold'] / best['ref']:.2f}x")

    from tokenizers import Tokenizer
    for style in ("metaspace", "gemma"):
        path = train_reference_bpe(Path(tempfile.mkdtemp()) / "tokenizer.json", style=style)
        sp, sp_ref = BPETokenizer.from_file(path), Tokenizer.from_file(str(path))
        o_fn, r_fn = (lambda p: sp.encode(p)), (lambda p: sp_ref.encode(p).ids)
        assert [o_fn(p) for p in prompts] == [r_fn(p) for p in prompts]
        warm, cold, ref_r = [], [], []
        for _ in range(args.rounds):
            sp.cache.clear(); cold.append(rate(o_fn, prompts, True))   # cold: in Gemma style the cache would memoize whole prompts
            warm.append(rate(o_fn, prompts, True)); ref_r.append(rate(r_fn, prompts, True))
        rr = max(ref_r)
        print(f"BPETokenizer ({style:9}) encode per prompt: ours cold {max(cold):8,.0f} (warm {max(warm):8,.0f})   "
              f"tokenizers {rr:8,.0f}   ratio cold {max(cold) / rr:.2f}x")


if __name__ == "__main__":
    main()
