"SentencePiece-style BPE: id-exact parity with the tokenizers library and transformers' GemmaTokenizerFast."
import json, re
import pytest, torch
from diffuse_nb.bpe_tokenizer import (BPETokenizer, make_decoder, make_gemma_style_tokenizer, make_normalizer,
                                      make_pre_tokenizer, post_processor_templates, split_pieces, train_reference_bpe)
from diffuse_nb.clip_tokenizer import prompt_corpus
from diffuse_nb.tokenizer_base import AddedToken

SP_CORPUS = prompt_corpus(300) + ["<start_of_turn>user\nhi<end_of_turn>", "x<bos>y <eos> z", "<pad><pad>",
                                  " leading", "trailing ", "a  b   c"]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return make_gemma_style_tokenizer(tmp_path_factory.mktemp("gemma") / "tokenizer")


def ref_gemma(d, **kw):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers.GemmaTokenizerFast.from_pretrained(d, **kw)


@pytest.mark.parametrize("style, scheme", [("metaspace", "always"), ("metaspace", "first"), ("metaspace", "never"),
                                           ("gemma", "always")])
def test_sentencepiece_bpe_matches_tokenizers(tmp_path, style, scheme):
    tokenizers = pytest.importorskip("tokenizers")
    path = train_reference_bpe(tmp_path / "tokenizer.json", prepend_scheme=scheme, style=style)
    ref, ours = tokenizers.Tokenizer.from_file(str(path)), BPETokenizer.from_file(path)
    assert len(ours) == ref.get_vocab_size() and "<0xF0>" in ours.vocab
    for p in SP_CORPUS:
        e = ref.encode(p)
        assert ours.encode(p) == e.ids, p
        for skip in (True, False): assert ours.decode(e.ids, skip) == ref.decode(e.ids, skip_special_tokens=skip), p
    plain = [p for p in SP_CORPUS if p == p.lstrip() and "<" not in p]
    assert all(ours.decode(ours.encode(p), skip_special_tokens=True) == p for p in plain)
    for side in ("left", "right"):
        ref.enable_padding(direction=side, pad_id=ours.pad_token_id, pad_token="<pad>", length=48)
        ref.enable_truncation(48)
        o = ours(SP_CORPUS, padding="max_length", max_length=48, truncation=True, padding_side=side)
        r = ref.encode_batch(SP_CORPUS)
        assert o.input_ids == [x.ids for x in r] and o.attention_mask == [x.attention_mask for x in r]


def test_gemma_folder_matches_transformers_left_padded(gemma_dir):
    ours, ref = BPETokenizer.from_pretrained(gemma_dir), ref_gemma(gemma_dir)
    assert ours.padding_side == ref.padding_side == "left" and ours.tokenizer_class == "GemmaTokenizer"
    assert len(ours) == len(ref) <= 512 and ours.get_vocab() == ref.get_vocab()
    kw = dict(padding="max_length", max_length=64, truncation=True, padding_side="left", return_tensors="pt")
    prompts = [p.strip() for p in SP_CORPUS]
    a, b = ours(prompts, **kw), ref(prompts, **kw)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert a.input_ids.shape == (len(prompts), 64) and a.attention_mask[:, -1].all()          # pads first
    assert [ours.encode(p) for p in SP_CORPUS] == [ref.encode(p) for p in SP_CORPUS]
    for ids in b.input_ids.tolist()[:100]:
        for skip in (True, False): assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip)


def test_gemma_round_trips(gemma_dir, tmp_path):
    ours, ref = BPETokenizer.from_pretrained(gemma_dir), ref_gemma(gemma_dir)
    ours.save_pretrained(tmp_path / "ours"); ref.save_pretrained(tmp_path / "hf")
    kw = dict(padding="max_length", max_length=48, truncation=True, padding_side="left")
    want = ours(SP_CORPUS, **kw)
    for t in [BPETokenizer.from_pretrained(tmp_path / "ours"), ref_gemma(tmp_path / "ours"),
              BPETokenizer.from_pretrained(tmp_path / "hf")]:
        assert dict(t(SP_CORPUS, **kw)) == want
        assert t.decode(want.input_ids[5]) == ours.decode(want.input_ids[5])


def test_metaspace_file_keeps_its_layout_where_transformers_rebuilds(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from transformers import GemmaTokenizerFast
    path = train_reference_bpe(tmp_path / "raw" / "tokenizer.json")
    meta = GemmaTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)))
    meta.save_pretrained(tmp_path / "meta")
    ours, reloaded = BPETokenizer.from_pretrained(tmp_path / "meta"), ref_gemma(tmp_path / "meta")
    assert all(ours.encode(p) == meta.encode(p) for p in SP_CORPUS)
    assert sum(reloaded.encode(p) != meta.encode(p) for p in SP_CORPUS) > 100     # transformers' documented trap


@pytest.mark.parametrize("kw", [dict(add_eos_token=True), dict(add_bos_token=False),
                                dict(add_bos_token=True, add_eos_token=True), dict(padding_side="right"),
                                dict(model_max_length=16), dict(pad_token="<eos>")])
def test_gemma_from_pretrained_kwargs(gemma_dir, kw):
    ours, ref = BPETokenizer.from_pretrained(gemma_dir, **kw), ref_gemma(gemma_dir, **kw)
    for call in [dict(), dict(padding=True), dict(padding="max_length", truncation=True, max_length=12)]:
        assert ours(SP_CORPUS[:60], **call) == dict(ref(SP_CORPUS[:60], **call)), (kw, call)
        assert ours(SP_CORPUS[:20], SP_CORPUS[20:40], **call) == dict(ref(SP_CORPUS[:20], SP_CORPUS[20:40], **call))
    assert (ours.padding_side, ours.model_max_length, ours.pad_token_id) == \
        (ref.padding_side, ref.model_max_length, ref.pad_token_id)


def test_config_add_bos_token_is_ignored_with_a_tokenizer_json(gemma_dir, tmp_path):
    import shutil
    d = shutil.copytree(gemma_dir, tmp_path / "g")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(cfg | {"add_bos_token": False, "add_eos_token": True}))
    ours, ref = BPETokenizer.from_pretrained(d), ref_gemma(d)
    assert ours("a cat").input_ids == ref("a cat")["input_ids"] == [2] + ours("a cat", add_special_tokens=False).input_ids


def test_make_gemma_style_tokenizer_layout(gemma_dir):
    j = json.loads((gemma_dir / "tokenizer.json").read_text())
    assert j["normalizer"] == {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    assert j["pre_tokenizer"] is None and [d["type"] for d in j["decoder"]["decoders"]] == ["Replace", "ByteFallback",
                                                                                           "Fuse"]
    t = BPETokenizer.from_pretrained(gemma_dir)
    assert (t.pad_token_id, t.eos_token_id, t.bos_token_id, t.unk_token_id, t.mask_token_id) == (0, 1, 2, 3, 4)
    assert t.convert_tokens_to_ids("<image_soft_token>") < 512 and max(t.get_vocab().values()) < 512
    with pytest.raises(FileExistsError, match="pass overwrite=True"): make_gemma_style_tokenizer(gemma_dir)


def test_bpe_from_pretrained_reads_config(tmp_path):
    pytest.importorskip("tokenizers")
    train_reference_bpe(tmp_path / "tokenizer" / "tokenizer.json")
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "<pad>", "eos_token": {"content": "<eos>", "__type": "AddedToken"}, "model_max_length": 32,
         "padding_side": "left", "legacy": False, "sp_model_kwargs": {}}))
    t = BPETokenizer.from_pretrained(tmp_path, subfolder="tokenizer")
    assert (t.padding_side, t.model_max_length, t.eos_token, t.pad_token_id) == ("left", 32, "<eos>", 0)
    assert t.bos_token is None and t.tokenizer_class == "PreTrainedTokenizerFast"
    enc = t(["a cat", "a dog on a mat " * 20], padding="max_length", truncation=True, return_tensors="pt")
    assert enc.input_ids.shape == (2, 32) and enc.input_ids[0, 0] == 0 and enc.attention_mask[1].all()


def test_components_small_cases():
    ms = make_pre_tokenizer({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True})
    assert ms("a b", True) == ["▁a", "▁b"] and ms("a b", False) == ["a", "▁b"]
    norm = make_normalizer({"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})
    assert norm("a b") == "▁a▁b"
    dec = make_decoder({"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]})
    assert dec(["a", "<0xFF>", "<0x41>"]) == ["a\ufffd\ufffd"]          # as tokenizers: one � per byte
    assert make_decoder({"type": "Strip", "content": " ", "start": 1, "stop": 0})([" a", "  b"]) == ["a", " b"]
    assert split_pieces("a--b-", re.compile("-"), "Contiguous") == ["a", "--", "b", "-"]
    assert split_pieces("a-b", re.compile("-"), "Removed") == ["a", "b"]
    tpl = {"type": "TemplateProcessing",
           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                              "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    assert post_processor_templates(tpl, {}.get) == ([(1, 0), ("A", 0), (2, 0)], [("A", 0), ("B", 1)])
    rob = post_processor_templates({"type": "RobertaProcessing", "cls": ["<s>", 0], "sep": ["</s>", 2]}, {}.get)
    assert rob[1] == [(0, 0), ("A", 0), (2, 0), (2, 0), ("B", 0), (2, 0)]


def test_unk_and_fuse_without_byte_fallback():
    vocab = {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "▁": 4}
    t = BPETokenizer(vocab, [("a", "b")], unk_token="<unk>", fuse_unk=True,
                     pre_tokenizer={"type": "Metaspace", "prepend_scheme": "never"})
    assert t.encode("ab猫猫a") == [3, 0, 1]
    t2 = BPETokenizer(vocab, [("a", "b")], unk_token="<unk>", fuse_unk=False)
    assert t2.encode("ab猫猫a") == [3, 0, 0, 1]


def test_added_token_flags_and_save(tmp_path):
    vocab = {"a": 0, "<x>": 1, "b": 2}
    t = BPETokenizer(vocab, [], added_tokens={1: {"content": "<x>", "special": True, "normalized": False,
                                                  "lstrip": True}})
    assert t.encode("a   <x>b") == t.encode("a<x>b") == [0, 1, 2]
    t.add_tokens(["ab"]); t.add_special_tokens({"pad_token": "<p>"})
    assert t.get_added_vocab() == {"<x>": 1, "ab": 3, "<p>": 4} and t.encode("abab") == [3, 3]
    t.save_pretrained(tmp_path)
    u = BPETokenizer.from_pretrained(tmp_path)
    assert u.added_tokens_decoder == t.added_tokens_decoder and u.pad_token_id == 4 and u.encode("abab") == [3, 3]
    assert AddedToken("x").normalized is True and AddedToken("x", special=True).normalized is False


def test_bad_construction_and_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found"): BPETokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json"): BPETokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"normalizer type 'BertNormalizer' is not supported"):
        make_normalizer({"type": "BertNormalizer"})
    with pytest.raises(ValueError, match=r"pre_tokenizer type 'ByteLevel' is not supported"):
        make_pre_tokenizer({"type": "ByteLevel"})
    with pytest.raises(ValueError, match=r"prepend_scheme='sometimes'"):
        make_pre_tokenizer({"type": "Metaspace", "prepend_scheme": "sometimes"})
    with pytest.raises(ValueError, match=r"behavior='Bogus'"):
        make_pre_tokenizer({"type": "Split", "pattern": {"String": " "}, "behavior": "Bogus"})
    with pytest.raises(ValueError, match=r"post_processor type 'Weird'"): post_processor_templates({"type": "Weird"}, None)
    (tmp_path / "wp.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match=r"model type 'WordPiece' is not supported; allowed: 'BPE'"):
        BPETokenizer.from_file(tmp_path / "wp.json")
    (tmp_path / "bl.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                                  "pre_tokenizer": {"type": "ByteLevel"}}))
    with pytest.raises(ValueError, match=r"byte-level / suffixed BPE is not supported"):
        BPETokenizer.from_file(tmp_path / "bl.json")
    t = BPETokenizer({"a": 0}, [])
    with pytest.raises(ValueError, match=r"needs a pad token"): t(["a", "aa"], padding="longest")
    assert t("a", padding="max_length").input_ids == [0]                 # no length limit: nothing to pad to
    with pytest.raises(ValueError, match=r"style='x' is not supported"): train_reference_bpe(tmp_path / "t.json", style="x")


def test_pickle_and_deepcopy(gemma_dir):
    import copy, pickle
    t = BPETokenizer.from_pretrained(gemma_dir)
    t.add_tokens(["<new>"])
    for u in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        assert u(SP_CORPUS[:30], padding=True) == t(SP_CORPUS[:30], padding=True) and u.padding_side == "left"
        assert u.decode(u.encode("a <new> cat")) == t.decode(t.encode("a <new> cat"))
