"""Code written for transformers' tokenizers runs on ours with the same results.

For CLIP (SD 2.1 / SDXL) the reference is transformers' `CLIPTokenizer` (= `CLIPTokenizerFast` in transformers 5) on
the real CLIP vocabulary; for Gemma3 (LTX-2) it is `GemmaTokenizerFast` on a tiny tokenizer in Gemma's own layout.
Every test builds both from the same folder and runs the same calls on both.
"""
import itertools, json, random, warnings
import numpy as np, pytest, torch
from diffuse_nb.bpe_tokenizer import BPETokenizer, make_gemma_style_tokenizer
from diffuse_nb.clip_tokenizer import CLIPTokenizer, clip_vocab_from_bpe, prompt_corpus
from diffuse_nb.tokenizer_base import BatchEncoding, TokenizerBase

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
PROMPTS = prompt_corpus(120)[30:]                                   # random prompts, some longer than 77 tokens
OAI = {"bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                     "single_word": False, "__type": "AddedToken"},
       "eos_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                     "single_word": False, "__type": "AddedToken"},
       "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 77,
       "tokenizer_class": "CLIPTokenizer", "errors": "replace", "do_lower_case": True, "add_prefix_space": False}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    clip = root / "clip"; clip.mkdir()
    vocab, merges = clip_vocab_from_bpe()
    (clip / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (clip / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (clip / "tokenizer_config.json").write_text(json.dumps(OAI))
    out = {"clip": clip, "clip_fast": clip, "gemma": make_gemma_style_tokenizer(root / "gemma")}
    for kind in ("clip", "gemma"):                                   # the folders transformers itself writes
        REF[kind]().from_pretrained(out[kind]).save_pretrained(root / f"{kind}_hf")
        out[f"{kind}_hf"] = root / f"{kind}_hf"
    return out


REF = {"clip": lambda: transformers.CLIPTokenizer, "clip_fast": lambda: transformers.CLIPTokenizerFast,
       "gemma": lambda: transformers.GemmaTokenizerFast}
OURS = {"clip": CLIPTokenizer, "clip_fast": CLIPTokenizer, "gemma": BPETokenizer}


def load(folders, kind, **kw):
    "(ours, reference) loaded from the same folder with the same keyword arguments."
    return OURS[kind].from_pretrained(folders[kind], **kw), REF[kind]().from_pretrained(folders[kind], **kw)


KINDS = ["clip", "gemma"]            # CLIPTokenizerFast is CLIPTokenizer in transformers 5: checked where it shows


def same(ours_out, ref_out):
    "Outputs agree: BatchEncodings key by key (tensors exactly), or plain values."
    if isinstance(ref_out, transformers.BatchEncoding) or isinstance(ours_out, BatchEncoding):
        assert list(ours_out) == list(ref_out), (list(ours_out), list(ref_out))
        for k in ref_out: same(ours_out[k], ref_out[k])
    elif isinstance(ref_out, torch.Tensor):
        assert ours_out.dtype == ref_out.dtype and torch.equal(ours_out, ref_out)
    elif isinstance(ref_out, np.ndarray):
        assert ours_out.dtype == ref_out.dtype and np.array_equal(ours_out, ref_out)
    else: assert ours_out == ref_out


@pytest.mark.parametrize("kind", KINDS + ["clip_fast"])
def test_default_call_and_decode(folders, kind):
    ours, ref = load(folders, kind)
    for text in [PROMPTS[0], PROMPTS[:7], "", [""], "a <|endoftext|> b <bos> c"]:
        same(ours(text), ref(text))
        same(ours.encode(text if isinstance(text, str) else text[0]), ref.encode(text if isinstance(text, str)
                                                                                 else text[0]))
    ids = ref(PROMPTS[:7], padding=True, truncation=True)["input_ids"]
    for skip in (False, True):
        same(ours.decode(ids[0], skip_special_tokens=skip), ref.decode(ids[0], skip_special_tokens=skip))
        same(ours.decode(ids, skip_special_tokens=skip), ref.decode(ids, skip_special_tokens=skip))
        same(ours.batch_decode(torch.tensor(ids), skip_special_tokens=skip),
             ref.batch_decode(torch.tensor(ids), skip_special_tokens=skip))
    same(ours.decode(ids[0][3]), ref.decode(ids[0][3]))
    same(ours.batch_decode(ids[0]), ref.batch_decode(ids[0]))
    assert "<" in ours.decode(ids[0])                                        # special tokens kept by default


def _outcome(tok, texts, pairs, kw):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(tok(texts, pairs, **kw))
    except Exception as e: return type(e).__name__


@pytest.mark.parametrize("kind", ["clip", "gemma"])
def test_padding_and_truncation_combinations(folders, kind):
    ours, ref = load(folders, kind)
    rng = random.Random(1)
    texts = [" ".join(rng.choice(PROMPTS).split()[:rng.randint(0, 9)]) for _ in range(5)]
    pairs = [" ".join(rng.choice(PROMPTS).split()[:rng.randint(0, 9)]) for _ in range(5)]
    nspec = {False: ours.num_special_tokens_to_add(False), True: ours.num_special_tokens_to_add(True)}
    grid = itertools.product([False, True, "longest", "max_length"], [None, False, True, "longest_first",
                             "only_first", "only_second"], [None, 3, 6, 11, 80], [False, True], ["left", "right"],
                             [None, 4])
    n_same = 0
    for padding, truncation, max_length, with_pair, side, multiple in grid:
        kw = dict(padding=padding, truncation=truncation, max_length=max_length, padding_side=side,
                  pad_to_multiple_of=multiple, return_special_tokens_mask=True, return_token_type_ids=True)
        ours.truncation_side = ref.truncation_side = side
        a, b = _outcome(ours, texts, pairs if with_pair else None, kw), _outcome(ref, texts, pairs if with_pair
                                                                                else None, kw)
        if isinstance(a, dict) or isinstance(b, dict):
            too_small = max_length is not None and max_length < nspec[with_pair] and a == "ValueError"
            assert a == b or too_small, (kw, with_pair, a, b)               # too small for the template: on purpose
        n_same += a == b
    assert n_same > 700


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kind_tensors", ["pt", "np"])
def test_tensors_and_optional_outputs(folders, kind, kind_tensors):
    ours, ref = load(folders, kind)
    for kw in [dict(padding=True), dict(padding="max_length", max_length=40, truncation=True),
               dict(padding=True, return_attention_mask=False, return_token_type_ids=True),
               dict(padding=True, return_special_tokens_mask=True, return_length=True, pad_to_multiple_of=8)]:
        same(ours(PROMPTS[:6], return_tensors=kind_tensors, **kw), ref(PROMPTS[:6], return_tensors=kind_tensors, **kw))
        same(ours(PROMPTS[0], return_tensors=kind_tensors, **kw), ref(PROMPTS[0], return_tensors=kind_tensors, **kw))
        same(ours(PROMPTS[:3], PROMPTS[3:6], return_tensors=kind_tensors, **kw),
             ref(PROMPTS[:3], PROMPTS[3:6], return_tensors=kind_tensors, **kw))
    same(ours.encode(PROMPTS[0], return_tensors=kind_tensors), ref.encode(PROMPTS[0], return_tensors=kind_tensors))
    if kind_tensors == "pt":                     # (for "np" transformers returns an object array of rows instead)
        with pytest.raises(ValueError): ref(PROMPTS[:6], return_tensors=kind_tensors)
    with pytest.raises(ValueError, match="needs rows of one length"): ours(PROMPTS[:6], return_tensors=kind_tensors)


@pytest.mark.parametrize("kind", KINDS)
def test_added_and_special_tokens(folders, kind):
    from tokenizers import AddedToken as HFAddedToken
    ours, ref = load(folders, kind)
    steps = [lambda t: t.add_tokens(["<cat-toy>", "<cat-toy>", "newword"]),
             lambda t: t.add_tokens("<cat-toy>"),
             lambda t: t.add_tokens(HFAddedToken(" <lst>", lstrip=True, normalized=False)),
             lambda t: t.add_tokens(["<sp>"], special_tokens=True),
             lambda t: t.add_special_tokens({"cls_token": "<cls>", "extra_special_tokens": ["<x1>", "<x2>"]}),
             lambda t: t.add_special_tokens({"extra_special_tokens": ["<x3>"]}, replace_extra_special_tokens=False),
             lambda t: t.add_special_tokens({"pad_token": "<|endoftext|>" if "clip" in kind else "<pad>"})]
    for step in steps: assert step(ours) == step(ref)
    text = "A <cat-toy> NEWWORD newwords <sp> <x1><cls>  <lst> end <x3>"
    for name in ["vocab_size", "special_tokens_map", "all_special_tokens", "all_special_ids", "extra_special_tokens",
                 "pad_token_id", "cls_token_id"]:
        assert getattr(ours, name) == getattr(ref, name), name
    assert (len(ours), ours.get_vocab(), ours.get_added_vocab()) == (len(ref), ref.get_vocab(), ref.get_added_vocab())
    plain = text.replace("<lst>", "")                # transformers' tokenize shows an lstrip token with its spaces
    assert ours.tokenize(plain) == ref.tokenize(plain)
    same(ours(text), ref(text))
    ids = ours.encode(text)
    for skip in (False, True): assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == ref.convert_ids_to_tokens(ids, skip_special_tokens=True)
    assert ours.convert_tokens_to_ids(["<cat-toy>", "zzz-unknown"]) == ref.convert_tokens_to_ids(["<cat-toy>",
                                                                                               "zzz-unknown"])
    assert {i: str(t) for i, t in ours.added_tokens_decoder.items()} == {i: str(t) for i, t in
                                                                        ref.added_tokens_decoder.items()}


@pytest.mark.parametrize("kind", KINDS + ["clip_fast"])
def test_attributes_and_setters(folders, kind):
    ours, ref = load(folders, kind)
    for name in ["vocab_size", "model_max_length", "padding_side", "truncation_side", "model_input_names",
                 "bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id",
                 "unk_token_id", "sep_token", "mask_token", "max_len_single_sentence"]:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.num_special_tokens_to_add(True) == ref.num_special_tokens_to_add(True)
    toks = ref.tokenize(PROMPTS[1])
    assert ours.convert_tokens_to_string(toks) == ref.convert_tokens_to_string(toks)
    for t in (ours, ref):                                 # what LTX-2's pipeline does before calling Gemma's tokenizer
        t.padding_side, t.truncation_side = "left", "left"
        t.pad_token = t.eos_token
    assert (ours.pad_token, ours.pad_token_id) == (ref.pad_token, ref.pad_token_id)
    kw = dict(padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    same(ours(PROMPTS[:9], **kw), ref(PROMPTS[:9], **kw))
    ours.pad_token_id = ref.pad_token_id = 5
    assert ours.pad_token == ref.pad_token and ours(PROMPTS[:3], padding=True) == dict(ref(PROMPTS[:3], padding=True))
    ours.model_max_length = ref.model_max_length = 12
    same(ours(PROMPTS[:4], padding="max_length", truncation=True), ref(PROMPTS[:4], padding="max_length",
                                                                       truncation=True))
    ours.model_input_names = ref.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    same(ours(PROMPTS[:2], PROMPTS[2:4]), ref(PROMPTS[:2], PROMPTS[2:4]))
    ours.pad_token = ref.pad_token = None
    with pytest.raises(ValueError, match="pad token"): ours(PROMPTS[:2], padding=True)
    with pytest.raises(ValueError): ref(PROMPTS[:2], padding=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kw", [dict(model_max_length=20, padding_side="left"), dict(pad_token="<|endoftext|>"),
                                dict(truncation_side="left", clean_up_tokenization_spaces=True),
                                dict(add_prefix_space=True, use_fast=True, legacy=False, spaces_between_special_tokens=False),
                                dict(split_special_tokens=True), dict(model_input_names=["input_ids"])])
def test_from_pretrained_of_transformers_saved_folder(folders, kind, kw):
    if "clip" not in kind and kw.get("pad_token"): kw = dict(kw, pad_token="<eos>")
    d = folders[f"{kind}_hf"]
    ours, ref = OURS[kind].from_pretrained(d, **kw), REF[kind]().from_pretrained(d, **kw)
    for call in [dict(), dict(padding="max_length", truncation=True, max_length=16), dict(padding=True)]:
        same(ours(PROMPTS[:8], **call), ref(PROMPTS[:8], **call))
    text = "a <|endoftext|> <bos> <pad> b"
    same(ours(text), ref(text))
    assert (ours.model_max_length, ours.padding_side, ours.truncation_side, ours.pad_token_id) == \
        (ref.model_max_length, ref.padding_side, ref.truncation_side, ref.pad_token_id)


@pytest.mark.parametrize("kind", KINDS)
def test_our_save_pretrained_loads_in_transformers(folders, kind, tmp_path):
    ours = OURS[kind].from_pretrained(folders[kind], padding_side="left", model_max_length=33, truncation_side="left")
    ours.add_tokens(["<cat-toy>", "newword"]); ours.add_special_tokens({"extra_special_tokens": ["<x>"]})
    ours.save_pretrained(tmp_path)
    ref, back = REF[kind]().from_pretrained(tmp_path), OURS[kind].from_pretrained(tmp_path)
    text = "a <cat-toy> newword <x> " + PROMPTS[0]
    for t in (ref, back):
        assert (t.padding_side, t.truncation_side, t.model_max_length) == ("left", "left", 33)
        assert t.get_vocab() == ours.get_vocab() and t.all_special_ids == ours.all_special_ids
        same(ours([text] + PROMPTS[:5], padding=True, truncation=True), t([text] + PROMPTS[:5], padding=True,
                                                                          truncation=True))
        assert t.decode(ours.encode(text), skip_special_tokens=True) == ours.decode(ours.encode(text), True)


def test_sd_pipeline_code_runs_unchanged(folders):
    "What diffusers' StableDiffusionPipeline.encode_prompt does with the tokenizer, on both."
    outs = []
    for tokenizer in load(folders, "clip"):
        prompt = [PROMPTS[-1] * 3, "a cat"]
        text_inputs = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                                return_tensors="pt")
        untruncated_ids = tokenizer(prompt, padding="longest", return_tensors="pt").input_ids
        removed = tokenizer.batch_decode(untruncated_ids[:, tokenizer.model_max_length - 1: -1])
        uncond = tokenizer([""] * 2, padding="max_length", max_length=text_inputs.input_ids.shape[-1],
                           truncation=True, return_tensors="pt")
        token = "<cat-toy>"                                               # textual inversion
        tokenizer.add_tokens(token)
        outs.append((text_inputs.input_ids, text_inputs.attention_mask, untruncated_ids, removed, uncond.input_ids,
                     len(tokenizer), tokenizer.convert_tokens_to_ids(token), tokenizer.tokenize(f"a {token}")))
    for a, b in zip(*outs): same(a, b)
    assert outs[0][0].shape == (2, 77) and outs[0][3][0]


def test_batch_encoding_behaves_like_transformers(folders):
    ours, ref = load(folders, "clip")
    a, b = ours(["a cat", "a dog"], return_tensors="pt"), ref(["a cat", "a dog"], return_tensors="pt")
    assert a.to("cpu") is a and a.input_ids is a["input_ids"] and list(a.keys()) == list(b.keys())
    assert isinstance(ours, TokenizerBase) and ours.model_input_names == ref.model_input_names
    with pytest.raises(AttributeError): a.token_type_ids
