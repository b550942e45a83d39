"Parity sweep, checkpoint layouts, bad-input table and LTX-2 prompt encoding for `diffuse_nb.gemma3` (tiny, fast)."
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from diffuse_nb.gemma3 import (GEMMA3_12B, Gemma3TextConfig, Gemma3TextModel, attention_masks, encode_prompts,
                               gemma3_text_config)
from diffuse_nb.layers import attention_backend
from diffuse_nb.testing import max_abs_err, randomize_, save_reference, temp_dir
from diffuse_nb.weights import CheckpointError, load_state_dict

TINY = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16)
VARIANTS = {
    "tiny": {},
    "7 layers gqa4 linear rope": dict(num_hidden_layers=7, num_key_value_heads=1, sliding_window=8,
                                      rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0},
                                                       "sliding_attention": {"rope_type": "default"}}),
    "alternating mha head_dim 16": dict(num_hidden_layers=3, num_key_value_heads=4, head_dim=16,
                                        query_pre_attn_scalar=10,
                                        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "odd sizes gqa3": dict(hidden_size=24, num_attention_heads=6, num_key_value_heads=2, head_dim=4,
                           intermediate_size=40, num_hidden_layers=4, sliding_window=5,
                           layer_types=["full_attention", "sliding_attention"] * 2),
    "bidirectional": dict(num_hidden_layers=6, use_bidirectional_attention=True, sliding_window=10),
}


def reference(seed=0, **kw):
    from transformers import Gemma3TextConfig as RefConfig, Gemma3TextModel as Ref
    torch.manual_seed(seed)
    return randomize_(Ref(RefConfig(**{**TINY, **kw})), std=0.1, seed=seed).eval()


def multimodal_reference(seed=0, **kw):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=Gemma3TextConfig(**{**TINY, **kw}), vision_config=vision, mm_tokens_per_image=4,
                       image_token_index=509, boi_token_index=510, eoi_token_index=511)
    torch.manual_seed(seed)
    return randomize_(Gemma3ForConditionalGeneration(cfg), std=0.1, seed=seed).eval()


def left_padded(lengths=(40, 27, 9), L=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (len(lengths), L), generator=g)
    am = torch.stack([torch.arange(L) >= L - n for n in lengths]).long()
    return ids.masked_fill(am == 0, 0), am


@pytest.fixture(scope="module")
def tiny():
    return Gemma3TextModel.from_pretrained(save_reference(reference()))


# ---- parity: every hidden state, padded and unpadded, both attention backends
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_text_model(name):
    ref = reference(**VARIANTS[name])
    ours = Gemma3TextModel.from_pretrained(save_reference(ref))
    ids, am = left_padded()
    with torch.no_grad():
        r = ref(ids, attention_mask=am, output_hidden_states=True)
        o = ours(ids, attention_mask=am, output_hidden_states=True)
        assert len(o.hidden_states) == ref.config.num_hidden_layers + 1
        assert max_abs_err((o.last_hidden_state, o.hidden_states), (r.last_hidden_state, r.hidden_states)) <= 1e-4
        assert o.hidden_states[-1] is o.last_hidden_state          # the last state is the normed one
        with attention_backend("math"):
            assert max_abs_err(ours(ids, attention_mask=am, output_hidden_states=True).hidden_states,
                               r.hidden_states) <= 1e-4
        for mask in (None, torch.ones_like(ids)):                   # no padding: the is_causal fast path
            assert max_abs_err(ours(ids, attention_mask=mask).last_hidden_state,
                               ref(ids, attention_mask=mask).last_hidden_state) <= 1e-4


def test_parity_bfloat16_and_position_ids():
    ref = reference(**VARIANTS["7 layers gqa4 linear rope"])
    path = save_reference(ref)
    ours = Gemma3TextModel.from_pretrained(path, dtype=torch.bfloat16)
    from transformers import Gemma3TextModel as Ref
    ref16 = Ref.from_pretrained(path, dtype=torch.bfloat16).eval()
    ids, am = left_padded()
    pos = torch.arange(5, 45)[None]
    with torch.no_grad():
        o = ours(ids, attention_mask=am, output_hidden_states=True)
        assert o.last_hidden_state.dtype == torch.bfloat16
        assert max_abs_err(o.hidden_states, ref16(ids, attention_mask=am, output_hidden_states=True).hidden_states) == 0
        assert max_abs_err(ours(ids, attention_mask=am, position_ids=pos).last_hidden_state,
                           ref16(ids, attention_mask=am, position_ids=pos).last_hidden_state) == 0


def test_multimodal_checkpoint_sharded_and_prefixes():
    ref = multimodal_reference(**VARIANTS["7 layers gqa4 linear rope"])
    path = save_reference(ref, max_shard_size="150KB")
    assert len(list(path.glob("*.safetensors"))) > 1
    ours = Gemma3TextModel.from_pretrained(path)
    ids, am = left_padded()
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states
        assert max_abs_err(ours(ids, attention_mask=am, output_hidden_states=True).hidden_states, r) <= 1e-4
    sd = load_state_dict(path)
    assert any(k.startswith("vision_tower.") for k in sd) and any(k.startswith("language_model.model.") for k in sd)
    v4_late = {re.sub(r"^(language_model\.model|vision_tower|multi_modal_projector)\.",
                    lambda m: "model.language_model." if m[1] == "language_model.model" else f"model.{m[1]}.", k): v
             for k, v in sd.items()}                                # late transformers 4 layout
    causal_lm = {"model." + k[len("language_model.model."):]: v for k, v in sd.items()
                 if k.startswith("language_model.model.")}         # a Gemma3ForCausalLM
    assert any(k.startswith("model.vision_tower.") for k in v4_late)
    for renamed in (v4_late, causal_lm):
        d = temp_dir()
        (d / "config.json").write_text((path / "config.json").read_text())
        save_file(renamed, d / "model.safetensors")
        with torch.no_grad():
            o = Gemma3TextModel.from_pretrained(d)(ids, attention_mask=am, output_hidden_states=True)
        assert max_abs_err(o.hidden_states, r) <= 1e-4


def test_strict_loading_names_what_is_wrong():
    ref = multimodal_reference()
    sd = load_state_dict(save_reference(ref))
    d = temp_dir()
    (d / "config.json").write_text(json.dumps(ref.config.to_dict()))
    save_file({k: v for k, v in sd.items() if "layers.1.self_attn.k_norm" not in k}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing: layers\.1\.self_attn\.k_norm\.weight"):
        Gemma3TextModel.from_pretrained(d)
    save_file({**sd, "language_model.model.layers.0.extra.weight": torch.zeros(2)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 unexpected: layers\.0\.extra\.weight"):
        Gemma3TextModel.from_pretrained(d)
    save_file(sd, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"text_config": {**TINY, "hidden_size": 48, "head_dim": 12}}))
    with pytest.raises(CheckpointError, match="wrong shape"):
        Gemma3TextModel.from_pretrained(d)


def test_save_pretrained_loads_in_transformers(tiny):
    from transformers import Gemma3TextModel as Ref
    d = tiny.save_pretrained(temp_dir() / "m")
    with pytest.raises(FileExistsError):
        tiny.save_pretrained(d)
    back = Ref.from_pretrained(d).eval()
    ids, am = left_padded()
    with torch.no_grad():
        assert max_abs_err(back(ids, attention_mask=am, output_hidden_states=True).hidden_states,
                           tiny(ids, attention_mask=am, output_hidden_states=True).hidden_states) == 0


# ---- configs: both RoPE layouts, as transformers reads them
def test_12b_config_and_parameter_count():
    from transformers import Gemma3TextConfig as RefConfig
    cfg, ref = gemma3_text_config(GEMMA3_12B), RefConfig(**GEMMA3_12B)
    assert list(cfg.layer_types) == ref.layer_types and cfg.rope_parameters == ref.rope_parameters
    assert gemma3_text_config(ref.to_dict()) == cfg
    assert gemma3_text_config({"text_config": dict(GEMMA3_12B), "model_type": "gemma3"}) == cfg
    with torch.device("meta"):
        model = Gemma3TextModel.from_config(GEMMA3_12B)
    assert sum(p.numel() for p in model.parameters()) == 11_766_034_176


def test_legacy_sliding_window_pattern():
    from transformers import Gemma3TextConfig as RefConfig
    kw = {**TINY, "num_hidden_layers": 7, "sliding_window_pattern": 3, "rope_theta": 5e5, "rope_local_base_freq": 99.0}
    ref = RefConfig(**kw)
    cfg = gemma3_text_config(kw)
    assert list(cfg.layer_types) == ref.layer_types
    assert cfg.rope_parameters == ref.rope_parameters


BAD_CONFIGS = [
    (dict(num_key_value_heads=3), "num_key_value_heads=3"),
    (dict(hidden_size=0), "hidden_size=0 must be a positive int"),
    (dict(hidden_activation="relu"), "hidden_activation='relu' is not supported"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "'dynamic' is not supported"),
    (dict(rope_scaling={"rope_type": "linear"}), "needs a positive 'factor'"),
    (dict(attn_logit_softcapping=50.0), "attn_logit_softcapping=50.0 is not supported"),
    (dict(layer_types=["sliding_attention", "global"]), "layer_types must list 2 entries"),
    (dict(sliding_window=None), "sliding_window=None must be a positive int"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 8.0}), "keyed by layer type"),
]


@pytest.mark.parametrize("kw,msg", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        gemma3_text_config({**TINY, **kw})


def test_config_type_errors():
    with pytest.raises(TypeError, match="config must be a dict"):
        gemma3_text_config("config.json")
    cfg = Gemma3TextConfig(**TINY)
    assert gemma3_text_config(cfg) is cfg and dict(cfg)["head_dim"] == 8


# ---- bad input: clear errors before compute
L = lambda *shape: torch.zeros(*shape, dtype=torch.long)
BAD = [
    ("id >= vocab", lambda: dict(input_ids=torch.tensor([[2, 512]])), ValueError, "id 512, outside the vocabulary"),
    ("negative id", lambda: dict(input_ids=torch.tensor([[-1, 2]])), ValueError, "id -1, outside the vocabulary"),
    ("too long", lambda: dict(input_ids=L(1, 257)), ValueError, "max_position_embeddings=256"),
    ("empty seq", lambda: dict(input_ids=L(1, 0)), ValueError, "seq_len must be >= 1"),
    ("empty batch", lambda: dict(input_ids=L(0, 4)), ValueError, "seq_len must be >= 1"),
    ("float ids", lambda: dict(input_ids=torch.zeros(1, 4)), TypeError, "integer dtype"),
    ("list ids", lambda: dict(input_ids=[[1, 2]]), TypeError, "input_ids must be a torch.Tensor"),
    ("1-D ids", lambda: dict(input_ids=L(4)), ValueError, "shape (batch, seq_len)"),
    ("mask shape", lambda: dict(input_ids=L(2, 5), attention_mask=torch.ones(2, 4)), ValueError,
     "attention_mask has shape (2, 4)"),
    ("mask 4-D", lambda: dict(input_ids=L(2, 5), attention_mask=torch.ones(2, 1, 5, 5)), ValueError,
     "attention_mask has shape (2, 1, 5, 5)"),
    ("float mask", lambda: dict(input_ids=L(2, 5), attention_mask=torch.ones(2, 5)), TypeError,
     "attention_mask must hold integers"),
    ("mask type", lambda: dict(input_ids=L(2, 5), attention_mask=[[1] * 5] * 2), TypeError,
     "attention_mask must be a torch.Tensor"),
    ("position shape", lambda: dict(input_ids=L(2, 5), position_ids=L(2, 4)), ValueError, "position_ids has shape"),
    ("ids and embeds", lambda: dict(input_ids=L(1, 5), inputs_embeds=torch.zeros(1, 5, 32)), ValueError,
     "exactly one of"),
    ("nothing", lambda: dict(), ValueError, "exactly one of"),
    ("embeds width", lambda: dict(inputs_embeds=torch.zeros(1, 5, 31)), ValueError, "(batch, seq_len, 32)"),
]


@pytest.mark.parametrize("name,make,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(tiny, name, make, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        tiny(**make())


def test_inputs_embeds_and_inference_modes(tiny):
    ids, am = left_padded()
    with torch.inference_mode():
        a = tiny(ids, attention_mask=am).last_hidden_state
    emb = tiny.embed_tokens(ids) * torch.tensor(32 ** 0.5)
    b = tiny(inputs_embeds=emb, attention_mask=am).last_hidden_state      # with grad
    assert b.requires_grad and max_abs_err(a, b) == 0
    b.sum().backward()
    assert tiny.layers[0].self_attn.q_proj.weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_attention_masks_shapes_and_fast_path():
    masks = attention_masks(None, 10, 16)
    assert masks == {"full_attention": (None, True), "sliding_attention": (None, True)}
    m, causal = attention_masks(None, 20, 16)["sliding_attention"]
    assert not causal and m.shape == (1, 1, 20, 20) and not m[0, 0, 19, 3] and m[0, 0, 19, 4]
    m, _ = attention_masks(torch.tensor([[0, 1, 1]]), 3, 16)["full_attention"]
    assert m.shape == (1, 1, 3, 3) and not m[0, 0, :, 0].any() and not m[0, 0, 0].any()


# ---- LTX-2 prompt encoding
@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer
    from diffuse_nb.bpe_tokenizer import BPETokenizer, make_gemma_style_tokenizer
    d = make_gemma_style_tokenizer(temp_dir() / "tokenizer", vocab_size=512)
    return BPETokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def test_encode_prompts_matches_ltx2_pipeline(tokenizers):
    from types import SimpleNamespace
    from diffusers import LTX2Pipeline
    ours_tok, ref_tok = tokenizers
    ref = multimodal_reference(num_hidden_layers=3)
    ours = Gemma3TextModel.from_pretrained(save_reference(ref))
    prompts = ["  A red fox runs through the snow at dawn, cinematic. ", "a cat", "猫 🐱 café"]
    fake = SimpleNamespace(tokenizer=ref_tok, text_encoder=ref, _execution_device=torch.device("cpu"))
    embeds, mask = LTX2Pipeline._get_gemma_prompt_embeds(fake, prompts, max_sequence_length=48)
    states, ours_mask = encode_prompts(prompts, ours_tok, ours, max_sequence_length=48)
    assert len(states) == 4 and torch.equal(mask, ours_mask) and mask[:, 0].sum() < 3   # left padded
    assert max_abs_err(torch.stack(states, -1).flatten(2, 3), embeds) <= 1e-4
    states1, mask1 = encode_prompts("a cat", ours_tok, ours, max_sequence_length=48)
    assert max_abs_err(states1, tuple(s[1:2] for s in states)) <= 1e-5 and torch.equal(mask1, mask[1:2])


@pytest.mark.parametrize("prompts,kw,exc,msg", [
    ([], {}, ValueError, "non-empty list of str"),
    (None, {}, ValueError, "non-empty list of str"),
    (["ok", 3], {}, TypeError, "prompts[1] must be a str"),
    ("ok", dict(max_sequence_length=257), ValueError, "max_sequence_length=257 must be an int in [1, 256]"),
    ("ok", dict(max_sequence_length=0), ValueError, "max_sequence_length=0"),
    ("ok", dict(max_sequence_length=8.0), ValueError, "max_sequence_length=8.0"),
])
def test_encode_prompts_bad_input(tiny, tokenizers, prompts, kw, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        encode_prompts(prompts, tokenizers[0], tiny, **kw)
