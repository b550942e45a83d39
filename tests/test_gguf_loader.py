"Tests for diffuse_nb.gguf_loader on files written here with the gguf package: block decoders, names, errors."
import copy, sys, warnings

import numpy as np
import pytest
import torch
from torch import nn

gguf = pytest.importorskip("gguf")
from diffuse_nb.gguf_loader import (BLOCK_FORMATS, decode_q4_0, decode_q4_k, decode_q8_0, encode_q4_k, import_gguf,
                                    load_gguf_, map_gguf_names, read_gguf, save_gguf)
from diffuse_nb.quantize import DecodedWeight, psnr, weight_formats
from diffuse_nb.testing import temp_dir, tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel

warnings.filterwarnings("ignore", category=FutureWarning)
Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("kind,decode", [("Q8_0", decode_q8_0), ("Q4_0", decode_q4_0)])
def test_decoders_match_gguf(kind, decode):
    w = np.random.default_rng(1).standard_normal((5, 96)).astype(np.float32) * 3
    raw = gguf.quants.quantize(w, Q[kind])
    ours = decode(torch.from_numpy(raw).view(-1, BLOCK_FORMATS[kind][1])).view(5, 96)
    torch.testing.assert_close(ours, torch.from_numpy(gguf.quants.dequantize(raw, Q[kind])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e-3, 50.0])
def test_q4_k_round_trip_and_gguf_agrees(scale):
    w = torch.randn(3, 768) * scale
    w[0, :256] = 0                                             # an all-zero super-block
    w[1] = w[1].abs()                                          # no negative values: min 0
    raw = encode_q4_k(w)
    ours = decode_q4_k(raw).view(3, 768)
    torch.testing.assert_close(ours, torch.from_numpy(gguf.quants.dequantize(raw.view(3, -1).numpy(), Q.Q4_K)),
                               rtol=0, atol=1e-6 * scale)
    assert (ours - w).norm() / w.norm() < 0.12


def unet(**kw):
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(tiny_unet_config("sd", **kw)).eval()


def inputs(channels=32, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, size, size, generator=g), torch.tensor(5), torch.randn(1, 8, channels, generator=g)


@pytest.mark.parametrize("kind,min_psnr", [("Q8_0", 40), ("Q4_0", 18), ("Q4_K", 20)])
def test_unet_from_gguf_on_meta(kind, min_psnr):
    kw = dict(block_out_channels=(256, 256), cross_attention_dim=256) if kind == "Q4_K" else {}
    model, x = unet(**kw), inputs(256 if kw else 32)
    path = save_gguf(model, temp_dir() / f"u-{kind}.gguf", kind)
    with torch.device("meta"): loaded = UNet2DConditionModel.from_config(model.config)
    load_gguf_(loaded.eval(), path)
    formats = {m.gguf_type for m in loaded.modules() if isinstance(m, DecodedWeight)}
    assert formats == {kind} and len(weight_formats(loaded)) > 70
    assert not any(t.is_meta for t in loaded.state_dict().values())
    with torch.no_grad(): assert psnr(loaded(*x).sample, model(*x).sample) > min_psnr


def test_prefixed_names_and_key_map():
    model, d = unet(), temp_dir()
    prefixed = nn.Module(); prefixed.model = nn.Module(); prefixed.model.diffusion_model = model
    path = save_gguf(prefixed, d / "prefixed.gguf")
    assert next(iter(read_gguf(path))).startswith("model.diffusion_model.")
    a = load_gguf_(UNet2DConditionModel.from_config(model.config).eval(), path)
    renamed = {k: "w." + k for k in model.state_dict()}
    b = load_gguf_(UNet2DConditionModel.from_config(model.config).eval(), path,
                   key_map=lambda n: n.replace("model.diffusion_model.", ""))
    assert set(weight_formats(a)) == set(weight_formats(b))
    with pytest.raises(ValueError, match="do not match"):
        map_gguf_names(list(renamed.values()), list(model.state_dict()))


def test_tiny_ltx2_dit_weights_from_gguf():
    from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel
    cfg = dict(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
               audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
               audio_attention_head_dim=16, audio_cross_attention_dim=32, num_layers=2, caption_channels=32,
               rope_double_precision=False)
    torch.manual_seed(0)
    dit = LTX2VideoTransformer3DModel.from_config(cfg).eval()
    path = save_gguf(dit, temp_dir() / "dit.gguf", "Q8_0")
    with torch.device("meta"): loaded = LTX2VideoTransformer3DModel.from_config(cfg)
    load_gguf_(loaded, path)
    enc = weight_formats(loaded)
    assert len(enc) > 20
    for name in enc:
        w, ref = loaded.get_submodule(name).weight, dit.get_submodule(name).weight
        assert (w - ref).abs().max() <= ref.abs().max() / 127 + 1e-6
    plain = {k: v for k, v in dit.state_dict().items() if k.rpartition(".")[0] not in enc}
    for k, v in plain.items(): torch.testing.assert_close(loaded.state_dict()[k], v)


def _write(path, name, raw, kind):
    w = gguf.GGUFWriter(str(path), "diffuse_nb")
    w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=kind)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_errors_before_anything_changes(monkeypatch):
    d, model = temp_dir(), unet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q5 = _write(d / "q5.gguf", "conv_in.weight", gguf.quants.quantize(np.ones((4, 32), np.float32), Q.Q5_1),
                Q.Q5_1)
    with pytest.raises(ValueError, match="ggml type Q5_1"): load_gguf_(model, q5)
    with pytest.raises(ValueError, match="do not match"):
        load_gguf_(model, save_gguf(UNet2DConditionModel.from_config(tiny_unet_config("sdxl")), d / "xl.gguf"))
    with pytest.raises(ValueError, match="has shape"): load_gguf_(model, save_gguf(unet(cross_attention_dim=64),
                                                                                  d / "shape.gguf"))
    with pytest.raises(FileNotFoundError): load_gguf_(model, d / "missing.gguf")
    with pytest.raises(FileExistsError): save_gguf(model, q5)
    with pytest.raises(ValueError, match="ggml_type='Q5_1'"): save_gguf(model, d / "x.gguf", "Q5_1")
    assert weight_formats(model) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match="pip install gguf"): import_gguf()
