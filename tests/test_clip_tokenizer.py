"CLIP's byte-level BPE: id-exact parity with transformers, folder loading/saving, bad input."
import json, subprocess, sys
import numpy as np, pytest, torch
from diffuse_nb.clip_tokenizer import (CLIPTokenizer, bytes_to_unicode, bpe_merge, clip_vocab_from_bpe,
                                       clip_normalize, clip_pattern, prompt_corpus, tokenizer_init_kwargs)
from diffuse_nb.tokenizer_base import AddedToken, VERY_LARGE_INTEGER

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


# ------------------------------------------------------------------ parity with transformers
@pytest.mark.parametrize("pad", ["<|endoftext|>", "!"])
def test_clip_matches_transformers(clip_files, pad):
    ref = ref_clip(clip_files, pad_token=pad)
    ours = CLIPTokenizer.from_bpe_file(pad_token=pad)
    assert [ours.encode(p) for p in CORPUS] == [ref.encode(p) for p in CORPUS]
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    a, b = ours(CORPUS, **kw), ref(CORPUS, **kw)
    assert torch.equal(a.input_ids, b["input_ids"]) and torch.equal(a.attention_mask, b["attention_mask"])
    for i in range(0, len(CORPUS), 16):
        kw = dict(padding="longest", max_length=77, truncation=True)
        assert ours(CORPUS[i:i + 16], **kw) == dict(ref(CORPUS[i:i + 16], **kw))
    for ids in b["input_ids"].tolist():
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_clip_other_lengths_and_sides(clip_files, clip):
    ref = ref_clip(clip_files)
    for kw in [dict(max_length=10), dict(max_length=3), dict(max_length=2), dict(max_length=20, padding_side="left")]:
        a = clip(CORPUS[:100], padding="max_length", truncation=True, **kw)
        b = ref(CORPUS[:100], padding="max_length", truncation=True, **kw)
        assert a == dict(b), kw


def _write_folder(d, files, cfg, smap=None):
    d.mkdir(parents=True)
    for f in ("vocab.json", "merges.txt"): (d / f).write_text((files / f).read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    if smap is not None: (d / "special_tokens_map.json").write_text(json.dumps(smap))
    return d


DICT = lambda c, n=True: {"content": c, "lstrip": False, "normalized": n, "rstrip": False, "single_word": False}
OAI = {"bos_token": DICT("<|startoftext|>"), "eos_token": DICT("<|endoftext|>"), "unk_token": DICT("<|endoftext|>"),
       "pad_token": "<|endoftext|>"}
DECODER = {str(i): DICT(c, False) | {"special": True} for i, c in [(0, "!"), (49406, "<|startoftext|>"),
                                                                     (49407, "<|endoftext|>")]}
FOLDERS = [
    ("openai", OAI | {"model_max_length": 77}, OAI),
    ("sd21", OAI | {"model_max_length": 77}, OAI | {"pad_token": "!"}),
    ("all_dicts", OAI | {"model_max_length": 77, "pad_token": DICT("<|endoftext|>")},
     {k: DICT(v) for k, v in [("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                              ("unk_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")]}),
    ("eos_plain_pad_typed", {"eos_token": "<|endoftext|>", "model_max_length": 77,
                             "pad_token": DICT("<|endoftext|>") | {"__type": "AddedToken"}}, None),
    ("sdxl_decoder", {"added_tokens_decoder": DECODER, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                      "unk_token": "<|endoftext|>", "pad_token": "!", "model_max_length": 77, "errors": "replace",
                      "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}, OAI),
    ("no_config_length", {}, None),
]


@pytest.mark.parametrize("name, cfg, smap", FOLDERS, ids=[f[0] for f in FOLDERS])
def test_from_pretrained_folders(tmp_path, clip_files, name, cfg, smap):
    prompts = CORPUS[:40] + CORPUS[-60:]                                  # edge cases, then long random prompts
    d = _write_folder(tmp_path / name / "tokenizer", clip_files, cfg, smap)
    ours = CLIPTokenizer.from_pretrained(tmp_path / name, subfolder="tokenizer")
    ref = ref_clip(d)
    assert (ours.pad_token_id, ours.model_max_length) == (ref.pad_token_id, ref.model_max_length)
    assert {i: (t.content, t.normalized, t.special) for i, t in ours.added_tokens_decoder.items()} == \
        {i: (t.content, t.normalized, t.special) for i, t in ref.added_tokens_decoder.items()}
    assert [ours.encode(p) for p in prompts] == [ref.encode(p) for p in prompts]
    kw = dict(padding="max_length", max_length=77, truncation=True)
    assert ours(prompts, **kw) == dict(ref(prompts, **kw))
    ref.save_pretrained(tmp_path / "hf")                                  # transformers writes tokenizer.json
    assert CLIPTokenizer.from_pretrained(tmp_path / "hf")(prompts, **kw) == ours(prompts, **kw)
    ours.save_pretrained(tmp_path / "ours")                               # and reads what we write
    assert dict(ref_clip(tmp_path / "ours")(prompts, **kw)) == ours(prompts, **kw)


def test_config_reading_ignores_unknown_keys(tmp_path, caplog):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"errors": "replace", "chat_template": "x",
                                                                "model_max_length": 77, "image_token": "<im>"}))
    with caplog.at_level("DEBUG", logger="diffuse_nb.clip_tokenizer"):
        init = tokenizer_init_kwargs(tmp_path, {"use_fast": True, "pad_token": "!"})
    assert init == {"added_tokens": {}, "model_max_length": 77, "image_token": "<im>", "pad_token": "!"}
    assert "errors" in caplog.text and "use_fast" in caplog.text


# ------------------------------------------------------------------ behaviour without a reference
def test_call_defaults_are_transformers(clip):
    one = clip("a cat")                                                   # no padding, no truncation by default
    assert one.input_ids == [49406, 320, 2368, 49407] and one.attention_mask == [1] * 4
    assert len(clip("word " * 200).input_ids) == 202
    sd = clip(["a cat", "a dog"], padding="max_length", max_length=clip.model_max_length, truncation=True,
              return_tensors="pt")
    assert sd.input_ids.shape == (2, 77) and sd.input_ids.dtype == torch.long and sd.attention_mask.sum() == 8
    assert clip("a cat", return_tensors="pt").input_ids.shape == (1, 4)
    assert clip("a cat", return_tensors="np")["input_ids"].dtype == np.int64
    assert clip("a cat", add_special_tokens=False).input_ids == [320, 2368]
    left = clip(["a cat", "a big dog"], padding="longest", padding_side="left")
    assert left.input_ids[0][0] == 49407 and left.attention_mask[0] == [0, 1, 1, 1, 1]
    long = clip("word " * 200, truncation=True)                          # model_max_length 77
    assert len(long.input_ids) == 77 and long.input_ids[-1] == 49407


def test_decode_keeps_special_tokens_unless_asked(clip):
    ids = clip("A photo of an astronaut, 4K!", return_tensors="pt").input_ids
    assert clip.decode(ids[0]) == "<|startoftext|>a photo of an astronaut , 4 k ! <|endoftext|>"
    assert clip.decode(ids[0], skip_special_tokens=True) == "a photo of an astronaut , 4 k !"
    assert clip.batch_decode(ids, skip_special_tokens=True) == ["a photo of an astronaut , 4 k !"]
    assert clip.decode(ids) == [clip.decode(ids[0])]                     # 2-D: one text per row
    assert clip.decode(ids[0].numpy()) == clip.decode(ids[0].tolist())
    for p in ["café 猫 🐱", "hello world"]: assert clip.decode(clip.encode(p), skip_special_tokens=True) == p


def test_word_cache_is_consistent(clip):
    ids = [clip.encode(p) for p in CORPUS[:200]]
    clip.cache.clear()
    assert [clip.encode(p) for p in CORPUS[:200]] == ids and len(clip.cache) > 0


def test_runtime_needs_no_transformers_or_tokenizers():
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None; "
            "sys.modules['regex'] = None\n"
            "from diffuse_nb.clip_tokenizer import CLIPTokenizer\n"
            "from diffuse_nb.bpe_tokenizer import BPETokenizer\n"
            "print(CLIPTokenizer.from_bpe_file()('a cat').input_ids)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[49406, 320, 2368, 49407]"


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
    (lambda t: t.decode([1], foo=1), TypeError, r"unexpected keyword argument 'foo'"),
    (lambda t: t("a", padding="max"), ValueError, r"padding='max' is not supported; allowed"),
    (lambda t: t("a", padding=1), ValueError, r"padding=1 is not supported"),
    (lambda t: t("a", truncation="yes"), ValueError, r"truncation='yes' is not supported"),
    (lambda t: t("a", padding_side="middle"), ValueError, r"padding_side='middle' is not supported; allowed: \("),
    (lambda t: t("a", max_length=1, truncation=True), ValueError, r"max_length=1 is too small.*allowed: >= 2"),
    (lambda t: t("a", max_length=-5), ValueError, r"max_length=-5 is too small; allowed: >= 0"),
    (lambda t: t("a", max_length="77"), TypeError, r"max_length must be an int or None, got str"),
    (lambda t: t("a", max_length=True), TypeError, r"max_length must be an int or None, got bool"),
    (lambda t: t("a", return_tensors="tf"), ValueError, r"return_tensors='tf' is not supported"),
    (lambda t: t(["a", "b c d"], return_tensors="pt"), ValueError, r"needs rows of one length"),
    (lambda t: t("a", "b", truncation="only_second", max_length=5), ValueError, r"'only_second' cannot reach 1"),
    (lambda t: t(["a"], ["b", "c"]), ValueError, r"text_pair must have the shape of text"),
    (lambda t: t("a", stride=4), ValueError, r"stride=4 is not supported"),
    (lambda t: t("a", return_offsets_mapping=True), ValueError, r"return_offsets_mapping=True is not supported"),
    (lambda t: t("a", padd=True), TypeError, r"unexpected keyword argument 'padd'"),
    (lambda t: t.add_special_tokens({"foo": "x"}), ValueError, r"key 'foo' is not supported"),
    (lambda t: t.add_tokens(3), TypeError, r"new_tokens must be a str, an AddedToken"),
])
def test_bad_input(clip, call, exc, msg):
    with pytest.raises(exc, match=msg): call(clip)


def test_bad_construction_and_loading(tmp_path):
    with pytest.raises(ValueError, match=r"padding_side='up'"): CLIPTokenizer.from_bpe_file(padding_side="up")
    with pytest.raises(ValueError, match=r"model_max_length=0"): CLIPTokenizer.from_bpe_file(model_max_length=0)
    with pytest.raises(TypeError, match=r"vocab must be a non-empty dict"): CLIPTokenizer([], [])
    with pytest.raises(TypeError, match=r"bos_token must be a str"): CLIPTokenizer.from_bpe_file(bos_token=5)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['foo'\]"): CLIPTokenizer.from_bpe_file(foo=1)
    with pytest.raises(TypeError, match=r"path_or_repo_id must be a str or Path"): CLIPTokenizer.from_pretrained(3)
    with pytest.raises(FileNotFoundError, match=r"no subfolder 'tok'"):
        CLIPTokenizer.from_pretrained(tmp_path, subfolder="tok")
    with pytest.raises(FileNotFoundError, match=r"neither vocab.json"): CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"not found"): CLIPTokenizer.from_bpe_file(tmp_path / "x.txt.gz")
    t = CLIPTokenizer.from_bpe_file(pad_token=None)
    with pytest.raises(ValueError, match=r"needs a pad token"): t(["a", "a b"], padding=True)
    with pytest.raises(NotADirectoryError, match=r"is a file"):
        (tmp_path / "f").write_text("x"); t.save_pretrained(tmp_path / "f")


def test_unknown_named_token_is_appended_as_in_transformers():
    t = CLIPTokenizer.from_bpe_file(pad_token="<pad>")
    assert t.pad_token_id == 49408 and len(t) == 49409 and t.vocab_size == 49408
    assert t.added_tokens_decoder[49408] == AddedToken("<pad>", special=True)


def test_save_pretrained_never_overwrites(tmp_path, clip):
    clip.save_pretrained(tmp_path / "t")
    with pytest.raises(FileExistsError, match="pass overwrite=True"): clip.save_pretrained(tmp_path / "t")
    clip.save_pretrained(tmp_path / "t", overwrite=True)
    assert CLIPTokenizer.from_pretrained(tmp_path / "t").model_max_length == 77
    assert CLIPTokenizer.from_pretrained(tmp_path / "t")(CORPUS[:50]) == clip(CORPUS[:50])


def test_repo_id_offline_fails_fast():
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        CLIPTokenizer.from_pretrained("stabilityai/stable-diffusion-2-1", subfolder="tokenizer", local_files_only=True)
    assert VERY_LARGE_INTEGER == int(1e30)
