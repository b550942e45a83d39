"Parity with transformers/tokenizers, bad-input table and loading round trips for diffuse_nb.tokenizers."
import json, re, subprocess, sys
import numpy as np, pytest, torch
from diffuse_nb.tokenizers import (CLIPTokenizer, BPETokenizer, AddedToken, bytes_to_unicode, bpe_merge, clip_vocab_from_bpe,
                                   clip_normalize, clip_pattern, prompt_corpus, train_reference_bpe, make_decoder,
                                   make_normalizer, make_pre_tokenizer, post_processor_ids, split_pieces)

CORPUS = prompt_corpus(600)


@pytest.fixture(scope="module")
def clip():
    return CLIPTokenizer.from_bpe_file()


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    "vocab.json + merges.txt derived from the shipped BPE file, as the reference's input."
    d = tmp_path_factory.mktemp("clip")
    vocab, merges = clip_vocab_from_bpe()
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return d


def ref_clip(d, **kw):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.CLIPTokenizer.from_pretrained(d, **kw)


# ------------------------------------------------------------------ pure functions
def test_bytes_to_unicode_is_a_printable_bijection():
    t = bytes_to_unicode()
    assert sorted(t) == list(range(256)) and len(set(t.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in t.values()) and t[ord("a")] == "a" and t[32] == "Ġ"


def test_bpe_merge_lowest_rank_first():
    ranks = {("a", "b"): 0, ("ab", "c"): 1, ("b", "c"): 2}
    assert bpe_merge(list("abc"), ranks) == ["abc"]
    assert bpe_merge(list("bcab"), ranks) == ["bc", "ab"]
    assert bpe_merge(["x"], ranks) == ["x"] and bpe_merge([], ranks) == []
    assert bpe_merge(list("aaaa"), {("a", "a"): 0}) == ["aa", "aa"]


def test_vocab_derivation_matches_openai_layout():
    vocab, merges = clip_vocab_from_bpe()
    assert (len(vocab), len(merges)) == (49408, 48894)
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["a</w>"] == 320 and vocab["photo</w>"] == 1125 and merges[0] == ("i", "n")


def test_cleaning_details():
    assert clip_normalize("A\u00a0\u3000 B\tC") == "a b c"
    assert clip_normalize("ΟΔΟΣ") == "οδοσ"                       # no final-sigma rule (per-char lowercase, like Rust)
    assert clip_normalize("cafe\u0301") == "café"                  # NFC
    assert clip_normalize("a\x1cb") == "a\x1cb"                    # \x1c is not Unicode White_Space
    assert clip_pattern().findall("don't 42 ab!!cd") == ["don", "'t", "4", "2", "ab", "!!", "cd"]


# ------------------------------------------------------------------ CLIP parity with transformers
@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_clip_matches_transformers(clip_files, pad):
    ref = ref_clip(clip_files, pad_token=pad)
    ours = CLIPTokenizer.from_bpe_file(pad_token=pad)
    assert [ours.encode(p) for p in CORPUS] == [ref(p).input_ids for p in CORPUS]
    a = ours(CORPUS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    b = ref(CORPUS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(a.input_ids, b["input_ids"]) and torch.equal(a.attention_mask, b["attention_mask"])
    for i in range(0, len(CORPUS), 16):
        x = ours(CORPUS[i:i + 16], padding="longest", max_length=77, truncation=True)
        y = ref(CORPUS[i:i + 16], padding="longest", max_length=77, truncation=True)
        assert x.input_ids == y["input_ids"] and x.attention_mask == y["attention_mask"]
    for ids in b["input_ids"].tolist():
        for skip in (True, False):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip)


def test_clip_other_lengths_and_sides(clip_files, clip):
    ref = ref_clip(clip_files)
    for kw in [dict(max_length=10), dict(max_length=3), dict(max_length=20, padding_side="left")]:
        a = clip(CORPUS[:100], padding="max_length", truncation=True, **kw)
        b = ref(CORPUS[:100], padding="max_length", truncation=True, **kw)
        assert a.input_ids == b["input_ids"] and a.attention_mask == b["attention_mask"], kw


def _write_folder(d, files, cfg, smap):
    d.mkdir(parents=True)
    for f in ("vocab.json", "merges.txt"): (d / f).write_text((files / f).read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg)); (d / "special_tokens_map.json").write_text(json.dumps(smap))
    return d


DICT = lambda c: {"content": c, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
OAI = {"bos_token": DICT("<|startoftext|>"), "eos_token": DICT("<|endoftext|>"), "unk_token": DICT("<|endoftext|>"),
       "pad_token": "<|endoftext|>"}


@pytest.mark.parametrize("name, smap", [("openai", OAI), ("sd21", OAI | {"pad_token": "!"}),
                                        ("all_dicts", {k: DICT(v) for k, v in [("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                                                       ("unk_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")]})])
def test_from_pretrained_folders(tmp_path, clip_files, name, smap):
    d = _write_folder(tmp_path / name / "tokenizer", clip_files, OAI | {"model_max_length": 77}, smap)
    ours = CLIPTokenizer.from_pretrained(tmp_path / name, subfolder="tokenizer")
    ref = ref_clip(d)
    assert ours.pad_token_id == ref.pad_token_id and ours.model_max_length == 77
    assert ours(CORPUS).input_ids == ref(CORPUS, padding="max_length", truncation=True)["input_ids"]
    assert [ours.encode(p) for p in CORPUS] == [ref(p).input_ids for p in CORPUS]
    ref.save_pretrained(tmp_path / "hf")                                  # transformers writes tokenizer.json
    assert CLIPTokenizer.from_pretrained(tmp_path / "hf")(CORPUS).input_ids == ours(CORPUS).input_ids
    ours.save_pretrained(tmp_path / "ours")                               # and reads what we write
    assert ref_clip(tmp_path / "ours")(CORPUS, padding="max_length", truncation=True)["input_ids"] == ours(CORPUS).input_ids


# ------------------------------------------------------------------ behaviour without a reference
def test_call_shapes_and_defaults(clip):
    one = clip("a cat")                                                   # defaults: pad to 77, truncate
    assert len(one.input_ids) == 77 and sum(one.attention_mask) == 4 and one.input_ids[3:5] == [49407, 49407]
    t = clip(["a cat", "a dog"], return_tensors="pt")
    assert t.input_ids.shape == (2, 77) and t.input_ids.dtype == torch.long
    assert clip("a cat", return_tensors="pt").input_ids.shape == (1, 77)
    assert clip("a cat", return_tensors="np")["input_ids"].dtype == np.int64
    assert clip("a cat", padding=False).input_ids == [49406, 320, 2368, 49407]
    assert clip("a cat", padding=False, add_special_tokens=False).input_ids == [320, 2368]
    left = clip(["a cat", "a big dog"], padding="longest", padding_side="left")
    assert left.input_ids[0][0] == 49407 and left.attention_mask[0] == [0, 1, 1, 1, 1]
    long = clip("word " * 200)
    assert len(long.input_ids) == 77 and long.input_ids[-1] == 49407 and sum(long.attention_mask) == 77
    assert len(clip("word " * 200, truncation=False, padding=False).input_ids) == 202


def test_decode_accepts_tensors_and_round_trips(clip):
    ids = clip("A photo of an astronaut, 4K!", return_tensors="pt").input_ids
    assert clip.decode(ids[0]) == "a photo of an astronaut , 4 k !"
    assert clip.batch_decode(ids) == ["a photo of an astronaut , 4 k !"]
    assert clip.decode(ids[0].numpy()) == clip.decode(ids[0].tolist())
    assert clip.decode(ids[0], skip_special_tokens=False).startswith("<|startoftext|>a photo")
    for p in ["café 猫 🐱", "hello world"]: assert clip.decode(clip.encode(p)) == p


def test_word_cache_is_consistent_and_bounded(clip):
    ids = [clip.encode(p) for p in CORPUS[:200]]
    clip.cache.clear()
    assert [clip.encode(p) for p in CORPUS[:200]] == ids and len(clip.cache) > 0


def test_runtime_needs_no_transformers_or_tokenizers():
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None; sys.modules['regex'] = None\n"
            "from diffuse_nb.tokenizers import CLIPTokenizer\n"
            "print(CLIPTokenizer.from_bpe_file()('a cat', padding=False).input_ids)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[49406, 320, 2368, 49407]"


# ------------------------------------------------------------------ SentencePiece-style BPE vs tokenizers
SP_CORPUS = CORPUS + ["<start_of_turn>user\nhi<end_of_turn>", "x<bos>y <eos> z", "<pad><pad>", " leading", "trailing ", "a  b   c"]


@pytest.mark.parametrize("style, scheme", [("metaspace", "always"), ("metaspace", "first"), ("metaspace", "never"), ("gemma", "always")])
def test_sentencepiece_bpe_matches_tokenizers(tmp_path, style, scheme):
    tokenizers = pytest.importorskip("tokenizers")
    path = train_reference_bpe(tmp_path / "tokenizer.json", prepend_scheme=scheme, style=style)
    ref, ours = tokenizers.Tokenizer.from_file(str(path)), BPETokenizer.from_file(path)
    assert ours.vocab_size == ref.get_vocab_size() and "<0xF0>" in ours.vocab
    for p in SP_CORPUS:
        e = ref.encode(p)
        assert ours.encode(p) == e.ids, p
        for skip in (True, False): assert ours.decode(e.ids, skip) == ref.decode(e.ids, skip_special_tokens=skip), p
    plain = [p for p in SP_CORPUS if p == p.lstrip() and "<" not in p]
    assert all(ours.decode(ours.encode(p)) == p for p in plain)
    for side in ("left", "right"):
        ref.enable_padding(direction=side, pad_id=ours.pad_token_id, pad_token="<pad>", length=48); ref.enable_truncation(48)
        o = ours(SP_CORPUS, padding="max_length", max_length=48, truncation=True, padding_side=side)
        r = ref.encode_batch(SP_CORPUS)
        assert o.input_ids == [x.ids for x in r] and o.attention_mask == [x.attention_mask for x in r]


def test_bpe_from_pretrained_reads_config(tmp_path):
    pytest.importorskip("tokenizers")
    train_reference_bpe(tmp_path / "tokenizer" / "tokenizer.json")
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "<pad>", "eos_token": {"content": "<eos>"}, "model_max_length": 32, "padding_side": "left"}))
    t = BPETokenizer.from_pretrained(tmp_path, subfolder="tokenizer")
    assert (t.padding_side, t.model_max_length, t.eos_token, t.pad_token_id) == ("left", 32, "<eos>", 0)
    enc = t(["a cat", "a dog on a mat " * 20], padding="max_length", truncation=True, return_tensors="pt")
    assert enc.input_ids.shape == (2, 32) and enc.input_ids[0, 0] == 0 and enc.attention_mask[1].all()


def test_components_small_cases():
    ms = make_pre_tokenizer({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True})
    assert ms("a b", True) == ["▁a", "▁b"] and ms("a b", False) == ["a", "▁b"]
    assert make_normalizer({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                               {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})("a b") == "▁a▁b"
    assert make_decoder({"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]})(["a", "<0xFF>", "<0x41>"]) == ["a\ufffd\ufffd"]  # as tokenizers: one � per byte
    assert make_decoder({"type": "Strip", "content": " ", "start": 1, "stop": 0})([" a", "  b"]) == ["a", " b"]
    assert split_pieces("a--b-", re.compile("-"), "Contiguous") == ["a", "--", "b", "-"]
    assert split_pieces("a-b", re.compile("-"), "Removed") == ["a", "b"]
    pp = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                                    {"SpecialToken": {"id": "</s>", "type_id": 0}}],
          "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    assert post_processor_ids(pp, {}.get) == ([1], [2])


def test_unk_and_fuse_without_byte_fallback():
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "▁": 4}
    t = BPETokenizer(vocab, [("a", "b")], unk_token="<unk>", fuse_unk=True,
                     pre_tokenizer={"type": "Metaspace", "prepend_scheme": "never"})
    assert t.encode("ab猫猫a") == [3, 0, 1]
    t2 = BPETokenizer(vocab, [("a", "b")], unk_token="<unk>", fuse_unk=False)
    assert t2.encode("ab猫猫a") == [3, 0, 0, 1]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, exc, msg", [
    (lambda t: t(42), TypeError, r"text must be a str or a list of str, got int"),
    (lambda t: t(["ok", 3.5]), TypeError, r"text\[1\] must be a str, got float"),
    (lambda t: t(None), TypeError, r"text must be a str"),
    (lambda t: t.encode(["a"]), TypeError, r"text must be a str, got list"),
    (lambda t: t.tokenize(7), TypeError, r"text must be a str"),
    (lambda t: t.decode([320, 49408]), ValueError, r"ids\[1\]=49408 is not a token id.*0 <= id < 49408"),
    (lambda t: t.decode(-3), ValueError, r"ids\[0\]=-3"),
    (lambda t: t.decode(["a"]), TypeError, r"ids\[0\] must be an int, got str"),
    (lambda t: t.decode([True]), TypeError, r"ids\[0\] must be an int, got bool"),
    (lambda t: t.decode("a cat"), TypeError, r"ids must be an int, a list of ints or a 1-D tensor"),
    (lambda t: t.decode(torch.tensor([1.0])), TypeError, r"ids must hold integers"),
    (lambda t: t.decode(torch.zeros(2, 2, dtype=torch.long)), ValueError, r"use batch_decode"),
    (lambda t: t.batch_decode(torch.zeros(3, dtype=torch.long)), ValueError, r"sequences must be 2-D"),
    (lambda t: t("a", padding="max"), ValueError, r"padding='max' is not supported; allowed"),
    (lambda t: t("a", padding=1), ValueError, r"padding=1 is not supported"),
    (lambda t: t("a", truncation="yes"), ValueError, r"truncation='yes' is not supported"),
    (lambda t: t("a", padding_side="middle"), ValueError, r"padding_side='middle' is not supported; allowed: \('left', 'right'\)"),
    (lambda t: t("a", max_length=0), ValueError, r"max_length=0 is too small; allowed: >= 3"),
    (lambda t: t("a", max_length=-5), ValueError, r"max_length=-5"),
    (lambda t: t("a", max_length="77"), TypeError, r"max_length must be an int or None, got str"),
    (lambda t: t("a", max_length=True), TypeError, r"max_length must be an int or None, got bool"),
    (lambda t: t("a", return_tensors="tf"), ValueError, r"return_tensors='tf' is not supported"),
    (lambda t: t(["a", "b c d"], padding=False, return_tensors="pt"), ValueError, r"pass padding='longest'"),
])
def test_bad_input(clip, call, exc, msg):
    with pytest.raises(exc, match=msg): call(clip)


def test_bad_construction_and_loading(tmp_path):
    with pytest.raises(ValueError, match=r"pad_token='<pad>' is not in the vocabulary"): CLIPTokenizer.from_bpe_file(pad_token="<pad>")
    with pytest.raises(ValueError, match=r"padding_side='up'"): CLIPTokenizer.from_bpe_file(padding_side="up")
    with pytest.raises(ValueError, match=r"model_max_length=2"): CLIPTokenizer.from_bpe_file(model_max_length=2)
    with pytest.raises(TypeError, match=r"vocab must be a non-empty dict"): CLIPTokenizer([], [])
    with pytest.raises(TypeError, match=r"bos_token must be a str"): CLIPTokenizer.from_bpe_file(bos_token=5)
    with pytest.raises(TypeError, match=r"path_or_repo_id must be a str or Path"): CLIPTokenizer.from_pretrained(3)
    with pytest.raises(FileNotFoundError, match=r"no subfolder 'tok'"): CLIPTokenizer.from_pretrained(tmp_path, subfolder="tok")
    with pytest.raises(FileNotFoundError, match=r"neither vocab.json"): CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not found"): CLIPTokenizer.from_bpe_file(tmp_path / "nope.txt.gz")
    with pytest.raises(FileNotFoundError, match=r"not found"): BPETokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json"): BPETokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"normalizer type 'BertNormalizer' is not supported"): make_normalizer({"type": "BertNormalizer"})
    with pytest.raises(ValueError, match=r"pre_tokenizer type 'ByteLevel' is not supported"): make_pre_tokenizer({"type": "ByteLevel"})
    with pytest.raises(ValueError, match=r"prepend_scheme='sometimes'"): make_pre_tokenizer({"type": "Metaspace", "prepend_scheme": "sometimes"})
    with pytest.raises(ValueError, match=r"behavior='Bogus'"): make_pre_tokenizer({"type": "Split", "pattern": {"String": " "}, "behavior": "Bogus"})
    (tmp_path / "wp.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match=r"model type 'WordPiece' is not supported; allowed: 'BPE'"): BPETokenizer.from_file(tmp_path / "wp.json")
    t = BPETokenizer({"a": 0}, [])
    with pytest.raises(ValueError, match=r"needs a pad token"): t(["a", "aa"], padding="longest")
    with pytest.raises(ValueError, match=r"needs max_length"): t("a", padding="max_length")
    with pytest.raises(ValueError, match=r"pad_token='<pad>' is not a token"): BPETokenizer({"a": 0}, [], pad_token="<pad>")


def test_added_token_flags():
    vocab = {"a": 0, "<x>": 1, "b": 2}
    t = BPETokenizer(vocab, [], added_tokens=[{"id": 1, "content": "<x>", "special": True, "normalized": False, "lstrip": True}])
    assert t.encode("a   <x>b") == t.encode("a<x>b") == [0, 1, 2]
    assert AddedToken("x").normalized is False


def test_repo_id_offline_fails_fast():
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        CLIPTokenizer.from_pretrained("stabilityai/stable-diffusion-2-1", subfolder="tokenizer", local_files_only=True)
