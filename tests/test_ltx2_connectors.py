"`diffuse_nb.ltx2_connectors` against diffusers' LTX-2 connectors: parity on tiny configs, loading, sizes, bad input."
import json

import pytest
import torch

from diffuse_nb.ltx2_connectors import (LTX2_CONNECTORS, LTX23_CONNECTORS, LTX2Attention, LTX2TextConnectors,
                                        PADDING_SIDES, connectors_config, normalize_per_token, pack_text_embeds,
                                        replace_padding_with_registers, stack_text_hidden_states, valid_token_mask)
from diffuse_nb.rope import ROPE_LAYOUTS, rope_1d_cos_sin
from diffuse_nb.testing import max_abs_err, randomize_, save_reference, temp_dir

ref_connectors = pytest.importorskip("diffusers.pipelines.ltx2.connectors")
ref_ltx2 = pytest.importorskip("diffusers.models.transformers.transformer_ltx2")

TINY = dict(caption_channels=32, text_proj_in_factor=3, connector_rope_base_seq_len=32,
            video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
            video_connector_num_layers=1, audio_connector_num_attention_heads=4,
            audio_connector_attention_head_dim=8, audio_connector_num_layers=1)
CONFIGS = {
    "ltx20": dict(TINY, video_connector_num_learnable_registers=8, audio_connector_num_learnable_registers=8,
                  rope_type="split"),
    "ltx23": dict(TINY, video_connector_num_learnable_registers=8, audio_connector_num_learnable_registers=4,
                  audio_connector_attention_head_dim=4, video_connector_num_layers=2, audio_connector_num_layers=2,
                  video_gated_attn=True, audio_gated_attn=True, per_modality_projections=True, video_hidden_dim=32,
                  audio_hidden_dim=16, proj_bias=True, rope_type="split"),
    "no_registers": dict(TINY, video_connector_num_learnable_registers=None,
                         audio_connector_num_learnable_registers=None, rope_double_precision=False),
    "ltx20_interleaved_gated_video": dict(TINY, video_connector_num_learnable_registers=16,
                                          audio_connector_num_learnable_registers=2, video_gated_attn=True,
                                          rope_theta=500.0, connector_rope_base_seq_len=64),
}

def tiny_reference(config, seed=0):
    torch.manual_seed(seed)
    return randomize_(ref_connectors.LTX2TextConnectors(**config), std=0.2, seed=seed).eval()

def text_batch(side, lengths=(16, 9, 3), L=16, seed=0, four_d=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(len(lengths), L, 32, 3, generator=g) * torch.tensor([0.5, 4.0, 30.0])
    return (h if four_d else h.flatten(2)), valid_token_mask(torch.tensor(lengths), L, side).long()

@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request):
    ref = tiny_reference(CONFIGS[request.param])
    return ref, LTX2TextConnectors.from_pretrained(save_reference(ref))

@pytest.mark.parametrize("side", PADDING_SIDES)
@pytest.mark.parametrize("lengths", [(16, 9, 3), (16, 16, 16), (1,), (8, 15)])
def test_parity(pair, side, lengths):
    ref, ours = pair
    h, mask = text_batch(side, lengths)
    with torch.no_grad():
        got, want = ours(h, mask, padding_side=side), ref(h, mask, padding_side=side)
    assert len(got) == 3 and max_abs_err(tuple(got), want) <= 1e-5
    assert got.attention_mask.dtype == torch.int64 and got.attention_mask.shape == mask.shape

def test_parity_4d_input_scale_factor_and_bf16(pair):
    ref, ours = pair
    h, mask = text_batch("left", four_d=True)
    with torch.no_grad():
        assert max_abs_err(tuple(ours(h, mask, scale_factor=3)), ref(h, mask, scale_factor=3)) <= 1e-5
        ref16 = tiny_reference(ref.config).to(torch.bfloat16)
        ours16 = LTX2TextConnectors.from_pretrained(save_reference(tiny_reference(ref.config)), dtype=torch.bfloat16)
        got, want = ours16(h.bfloat16(), mask), ref16(h.bfloat16(), mask)
    # LTX-2.3's per-token RMS is computed in float32 here, in bfloat16 by diffusers: a few bf16 steps apart
    scale = max(t.abs().max().item() for t in want)
    tol = 0.03 * scale if ref.config.per_modality_projections else 1e-2
    assert got.video_text_embedding.dtype == torch.bfloat16 and max_abs_err(tuple(got), want) <= tol

def test_parity_detects_a_changed_weight(pair):
    ref, ours = pair
    h, mask = text_batch("left")
    other = LTX2TextConnectors.from_config(ours.config)
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        other.video_connector.transformer_blocks[0].attn1.to_v.weight[0, 0] += 0.5
        assert max_abs_err(tuple(other(h, mask)), ref(h, mask)) > 1e-3

def test_grad_and_inference_modes(pair):
    _, ours = pair
    h, mask = text_batch("left")
    with torch.inference_mode(): a = ours(h, mask).video_text_embedding
    h.requires_grad_(True)
    out = ours(h, mask).audio_text_embedding
    out.sum().backward()
    assert h.grad is not None and torch.allclose(a, ours(h, mask).video_text_embedding.detach())

def test_save_pretrained_loads_in_diffusers(pair):
    _, ours = pair
    folder = ours.save_pretrained(temp_dir() / "connectors")
    back = ref_connectors.LTX2TextConnectors.from_pretrained(folder).eval()
    h, mask = text_batch("left", seed=5)
    with torch.no_grad(): assert max_abs_err(tuple(ours(h, mask)), back(h, mask)) <= 1e-6
    with pytest.raises(FileExistsError): ours.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "LTX2TextConnectors"
    assert {k for k in back.config if not k.startswith("_")} <= set(config)

@pytest.mark.parametrize("config,count", [(LTX2_CONNECTORS, 1_431_475_200), (LTX23_CONNECTORS, 3_172_227_584)])
def test_full_size_on_meta(config, count):
    with torch.device("meta"):
        ours, ref = LTX2TextConnectors(config), ref_connectors.LTX2TextConnectors(**config)
    assert sum(p.numel() for p in ours.parameters()) == count == sum(p.numel() for p in ref.parameters())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}

@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_parity(layout, gated, cross):
    kw = dict(query_dim=32, heads=4, kv_heads=4, dim_head=8, rope_type=layout, apply_gated_attention=gated,
              cross_attention_dim=24 if cross else None)
    ref = randomize_(ref_ltx2.LTX2Attention(**kw), std=0.2).eval()
    ours = LTX2Attention(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    Lk = 9 if cross else 6
    x, ctx = torch.randn(2, 6, 32), (torch.randn(2, 9, 24) if cross else None)
    mask = torch.zeros(2, 1, 1, Lk)
    mask[1, ..., :2] = -torch.finfo(torch.float32).max
    rq = rope_1d_cos_sin(2, 6, 32, 16, layout=layout, num_heads=4)
    rk = rope_1d_cos_sin(2, Lk, 32, 16, layout=layout, num_heads=4) if cross else None
    with torch.no_grad(): assert max_abs_err(ours(x, ctx, mask, rq, rk), ref(x, ctx, mask, rq, rk)) <= 1e-6

@pytest.mark.parametrize("side", PADDING_SIDES)
def test_pack_text_embeds(side):
    h = torch.randn(3, 10, 32, 4) * torch.tensor([0.1, 1.0, 10.0, 100.0])
    lengths = torch.tensor([10, 6, 1])
    want = ref_connectors.per_layer_masked_mean_norm(h, lengths, "cpu", padding_side=side, scale_factor=5)
    assert max_abs_err(pack_text_embeds(h, lengths, padding_side=side, scale_factor=5), want) <= 1e-6
    assert torch.equal(pack_text_embeds(list(h.unbind(-1)), lengths, padding_side=side, scale_factor=5),
                       pack_text_embeds(h, lengths, padding_side=side, scale_factor=5))

def test_normalize_per_token():
    h, mask = text_batch("right", four_d=True)
    want = ref_connectors.per_token_rms_norm(h).flatten(2) * mask[..., None]
    assert max_abs_err(normalize_per_token(h, mask), want) <= 1e-6

def test_stack_matches_pipeline_packing():
    states = tuple(torch.randn(2, 5, 6) for _ in range(4))
    assert torch.equal(stack_text_hidden_states(states), torch.stack(states, dim=-1).flatten(2, 3))

def test_registers_move_tokens_to_front():
    valid = torch.tensor([[False, False, True, True], [True, True, True, False]])
    x = torch.arange(8.0).view(2, 4, 1)
    regs = torch.tensor([[-1.0], [-2.0]])
    out = replace_padding_with_registers(x, valid, regs)[..., 0]
    assert out.tolist() == [[2.0, 3.0, -1.0, -2.0], [4.0, 5.0, 6.0, -2.0]]

# ---- bad input: clear errors, raised before any compute
H, M = text_batch("left")
BAD = [
    ("caption width", lambda: (H[..., :64], M, {}), ValueError, "(batch, seq_len, 96)"),
    ("4d width", lambda: (H.unflatten(2, (16, 6)), M, {}), ValueError, "(batch, seq_len, 32, 3)"),
    ("empty batch", lambda: (H[:0], M[:0], {}), ValueError, "the batch is empty"),
    ("empty sequence", lambda: (H[:, :0], M[:, :0], {}), ValueError, "the batch is empty"),
    ("mask shape", lambda: (H, M[:, :8], {}), ValueError, "attention_mask has shape (3, 8)"),
    ("mask batch", lambda: (H, M[:2], {}), ValueError, "attention_mask has shape (2, 16)"),
    ("mask type", lambda: (H, M.tolist(), {}), TypeError, "attention_mask must be a (batch, seq_len) torch.Tensor"),
    ("mask values", lambda: (H, M * 2, {}), ValueError, "only 0 (padding) and 1"),
    ("wrong side", lambda: (H, M, dict(padding_side="right")), ValueError, "not padded on the right"),
    ("bad side", lambda: (H, M, dict(padding_side="middle")), ValueError, "padding_side='middle'"),
    ("registers", lambda: (H[:, :12], M[:, :12], {}), ValueError, "video_connector_num_learnable_registers=8"),
    ("int states", lambda: (H.long(), M, {}), TypeError, "floating-point"),
    ("list states", lambda: (list(H), M, {}), TypeError, "text_encoder_hidden_states must be a floating-point"),
]

@pytest.mark.parametrize("name,make,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_before_compute(name, make, exc, msg, monkeypatch):
    model = LTX2TextConnectors.from_config(CONFIGS["ltx20"])
    def boom(*a, **k): raise AssertionError("computed before validating")
    monkeypatch.setattr(model.text_proj_in, "forward", boom)
    h, mask, kw = make()
    with pytest.raises(exc) as e: model(h, mask, **kw)
    assert msg in str(e.value)

def test_ltx23_ignores_padding_side():
    ref, ours = tiny_reference(CONFIGS["ltx23"]), None
    ours = LTX2TextConnectors.from_pretrained(save_reference(ref))
    h, mask = text_batch("right")
    with torch.no_grad():
        assert max_abs_err(tuple(ours(h, mask, padding_side="left")), ref(h, mask, padding_side="left")) <= 1e-5

@pytest.mark.parametrize("kw,exc,msg", [
    (dict(rope_type="rotary"), ValueError, "rope_type='rotary'"),
    (dict(video_connector_num_attention_heads=32), ValueError, "caption_channels=3840"),
    (dict(per_modality_projections=True), ValueError, "video_hidden_dim=4096"),
    (dict(audio_connector_num_learnable_registers=0), ValueError, "or None"),
    (dict(video_connector_num_layers=1.5), ValueError, "video_connector_num_layers=1.5"),
])
def test_bad_config(kw, exc, msg):
    with pytest.raises(exc) as e: connectors_config(kw)
    assert msg in str(e.value)

def test_other_bad_inputs():
    with pytest.raises(ValueError, match="hidden_states is empty"): stack_text_hidden_states([])
    with pytest.raises(TypeError, match="sequence of"): stack_text_hidden_states(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="one shape"): stack_text_hidden_states([torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)])
    h = torch.randn(3, 4, 8, 2)
    with pytest.raises(ValueError, match=r"it must be \(3,\)"): pack_text_embeds(h, torch.tensor([4, 2]))
    with pytest.raises(TypeError, match="sequence_lengths must be a torch.Tensor"): pack_text_embeds(h, [4, 2, 1])
    with pytest.raises(ValueError, match="padding_side='up'"): pack_text_embeds(h, torch.tensor([4, 2, 1]), padding_side="up")

def test_rows_are_independent(pair):
    "The pipeline batches [negative, positive] prompts: each row's result must not depend on the others."
    _, ours = pair
    h, mask = text_batch("left", lengths=(16, 5, 11, 2))
    with torch.no_grad():
        whole = ours(h, mask)
        rows = [ours(h[i:i + 1], mask[i:i + 1]) for i in range(4)]
    for j in range(3): assert max_abs_err(torch.cat([r[j] for r in rows]), whole[j]) <= 1e-5

def test_loads_pipeline_subfolder_strictly():
    ref = tiny_reference(CONFIGS["ltx23"])
    root = temp_dir()
    save_reference(ref, root / "connectors")
    ours = LTX2TextConnectors.from_pretrained(root, subfolder="connectors")
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    h, mask = text_batch("left")
    with torch.no_grad(): assert max_abs_err(tuple(ours(h, mask)), ref(h, mask)) <= 1e-5
