"Bad-input table, config sweep and loading layouts for `diffuse_nb.clip` (tiny configs, fast)."
import json
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffuse_nb.clip import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, VIT_BIGG_14, VIT_H_14, VIT_L_14,
                             clip_text_config, eos_positions)
from diffuse_nb.weights import CheckpointError

TINY = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=16)

@pytest.fixture(scope="module")
def model():
    return CLIPTextModelWithProjection.from_config(TINY).eval()

def ids_batch(B=2, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49406, (B, L), generator=g); ids[:, 0] = 49406; ids[:, -2:] = 49407
    return ids

# ---- bad input: clear errors before compute
BAD = [
    ("list ids", lambda: ([[49406, 1, 49407]], None), TypeError, "input_ids must be a torch.Tensor"),
    ("float ids", lambda: (ids_batch().float(), None), TypeError, "integer dtype"),
    ("bool ids", lambda: (ids_batch() > 5, None), TypeError, "integer dtype"),
    ("1-D ids", lambda: (ids_batch()[0], None), ValueError, "shape (batch, seq_len)"),
    ("empty seq", lambda: (torch.zeros(2, 0, dtype=torch.long), None), ValueError, "seq_len >= 1"),
    ("too long", lambda: (torch.zeros(1, 78, dtype=torch.long), None), ValueError, "max_position_embeddings=77"),
    ("id >= vocab", lambda: (torch.tensor([[49406, 49408]]), None), ValueError, "id 49408, outside the vocabulary"),
    ("negative id", lambda: (torch.tensor([[-1, 49407]]), None), ValueError, "id -1, outside the vocabulary"),
    ("mask shape", lambda: (ids_batch(), torch.ones(2, 8, dtype=torch.long)), ValueError, "attention_mask has shape (2, 8)"),
    ("mask type", lambda: (ids_batch(), [[1] * 9] * 2), TypeError, "attention_mask must be a torch.Tensor"),
]

@pytest.mark.parametrize("name,make,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(model, name, make, exc, msg):
    ids, mask = make()
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        model(ids, attention_mask=mask)

def test_bad_input_before_compute(model, monkeypatch):
    def boom(*a, **k): raise AssertionError("embedding ran before validation")
    monkeypatch.setattr(model.text_model.embeddings, "forward", boom)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[49406, 50000]]))

@pytest.mark.parametrize("kw,msg", [(dict(hidden_act="relu"), "hidden_act='relu'"),
                                    (dict(num_attention_heads=5), "not divisible"),
                                    (dict(num_hidden_layers=0), "num_hidden_layers=0"),
                                    (dict(hidden_size=32.0), "hidden_size=32.0")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        clip_text_config(dict(TINY, **kw))

def test_config_forms():
    assert clip_text_config(VIT_H_14).num_hidden_layers == 23
    nested = {"text_config": dict(VIT_L_14, projection_dim=512), "vision_config": {}, "projection_dim": 768}
    assert clip_text_config(nested).projection_dim == 768
    with pytest.raises(TypeError, match="config must be a dict"):
        clip_text_config([1, 2])

def test_eos_positions_rules():
    ids = torch.tensor([[49406, 2, 5, 49407, 49407], [49406, 7, 49407, 0, 0]])
    assert eos_positions(ids, 2).tolist() == [3, 2]          # legacy: argmax of the ids, not the position of id 2
    assert eos_positions(ids, 49407).tolist() == [3, 2]      # first EOS (EOS padding does not move it)
    added = torch.tensor([[49406, 320, 49407, 49408]])       # a token added after EOS in the vocabulary
    assert eos_positions(added, 2).tolist() == [3] and eos_positions(added, 49407).tolist() == [2]

def test_meta_parameter_counts():
    tr = pytest.importorskip("transformers")
    for cfg in (VIT_L_14, VIT_H_14, VIT_BIGG_14):
        with torch.device("meta"):
            ours = sum(p.numel() for p in CLIPTextModelWithProjection.from_config(cfg).parameters())
            ref = sum(p.numel() for p in tr.CLIPTextModelWithProjection(tr.CLIPTextConfig(**cfg)).parameters())
        assert ours == ref

# ---- parity sweep against transformers (tiny, random, loaded from save_pretrained folders)
SWEEP = [dict(with_projection=False),
         dict(with_projection=True),
         dict(with_projection=True, hidden_act="gelu", hidden_size=24, num_attention_heads=3, num_hidden_layers=1, projection_dim=8),
         dict(with_projection=False, hidden_act="gelu", eos_token_id=2, bos_token_id=0, pad_token_id=1, num_hidden_layers=3),
         dict(with_projection=True, eos_token_id=2, hidden_size=64, num_attention_heads=16, intermediate_size=20,
              max_position_embeddings=16, layer_norm_eps=1e-6)]

@pytest.mark.parametrize("kw", SWEEP, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_parity(kw):
    pytest.importorskip("transformers")
    from diffuse_nb.testing import tiny_clip, save_reference, check_parity
    ref = tiny_clip(**kw); path = save_reference(ref)
    cls = CLIPTextModelWithProjection if kw["with_projection"] else CLIPTextModel
    ours = cls.from_pretrained(path)
    L = min(12, ours.config.max_position_embeddings)
    ids = ids_batch(3, L, seed=1); ids[1, 2] = 2; ids[2, 4:] = 49407
    for mask in (None, torch.tensor([[1] * (L - 3) + [0] * 3, [1] * L, [0] * 2 + [1] * (L - 2)])):
        with torch.no_grad():
            o = ours(ids, attention_mask=mask, output_hidden_states=True)
            r = ref(ids, attention_mask=mask, output_hidden_states=True)
        head = ("text_embeds", "text_embeds") if kw["with_projection"] else ("pooler_output", "pooler_output")
        check_parity((o.last_hidden_state, getattr(o, head[0]), o.hidden_states),
                     (r.last_hidden_state, getattr(r, head[1]), r.hidden_states), atol=1e-5, name=str(kw))

# ---- loading layouts
def _ref_dir(with_projection=False, **kw):
    from diffuse_nb.testing import tiny_clip, save_reference
    ref = tiny_clip(with_projection=with_projection, **kw)
    return ref, save_reference(ref)

def test_sd_repo_layout_with_position_ids():
    pytest.importorskip("transformers")
    ref, path = _ref_dir()
    sd = {"text_model." + k: v for k, v in load_file(path / "model.safetensors").items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(sd, path / "model.safetensors")
    ours = CLIPTextModel.from_pretrained(path)
    ids = ids_batch()
    with torch.no_grad():
        assert torch.allclose(ours(ids).pooler_output, ref(ids).pooler_output, atol=1e-6)
    assert not any(t.is_meta for t in ours.state_dict().values())

def test_wrong_checkpoint_is_a_checkpoint_error():
    pytest.importorskip("transformers")
    _, path = _ref_dir(with_projection=True)
    with pytest.raises(CheckpointError, match="text_projection"):
        CLIPTextModel.from_pretrained(path)        # the projection head is not part of a CLIPTextModel
    _, path = _ref_dir(hidden_size=48, num_attention_heads=4)
    cfg = json.loads((path / "config.json").read_text()); cfg["hidden_size"] = 32
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        CLIPTextModel.from_pretrained(path)

def test_dtype_bf16():
    pytest.importorskip("transformers")
    ref, path = _ref_dir(with_projection=True)
    ours = CLIPTextModelWithProjection.from_pretrained(path, dtype="bfloat16")
    assert ours.text_projection.weight.dtype == torch.bfloat16
    ids = ids_batch()
    with torch.no_grad():
        out = ours(ids).text_embeds
        assert out.dtype == torch.bfloat16
        assert (out.float() - ref(ids).text_embeds).abs().max() < 5e-2

def test_output_indexing(model):
    with torch.no_grad(): o = model(ids_batch(), output_hidden_states=True)
    assert o[0] is o.text_embeds and o[1] is o.last_hidden_state and o[2] is o.hidden_states
    assert len(o.hidden_states) == TINY["num_hidden_layers"] + 1

def test_full_clipmodel_folder_into_with_projection():
    tr = pytest.importorskip("transformers")
    from diffuse_nb.testing import randomize_, save_reference
    cfg = tr.CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                                           image_size=32, patch_size=8), projection_dim=16)
    full = randomize_(tr.CLIPModel(cfg)).eval(); path = save_reference(full)
    ours = CLIPTextModelWithProjection.from_pretrained(path)
    assert ours.config.projection_dim == 16
    ids = ids_batch()
    with torch.no_grad():
        feats = full.get_text_features(ids)
        assert torch.allclose(ours(ids).text_embeds, getattr(feats, "pooler_output", feats), atol=1e-6)
    with pytest.raises(CheckpointError, match="unexpected"):
        CLIPTextModel.from_pretrained(path)       # strict: the bare text model does not own a projection
