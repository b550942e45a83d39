"Tests for from_pretrained(..., gguf_file=...) and the LDM / LTX-2 community names of diffuse_nb.gguf_loader."
import warnings

import pytest
import torch
from torch import nn

gguf = pytest.importorskip("gguf")
from diffuse_nb.gguf_loader import (community_key_map, ldm_unet_key_map, ltx2_dit_key_map, read_gguf, save_gguf)
from diffuse_nb.quantize import weight_formats
from diffuse_nb.testing import temp_dir, tiny_unet, tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel

warnings.filterwarnings("ignore", category=FutureWarning)
LEVELS = dict(block_out_channels=(32, 32, 64), layers_per_block=2, attention_head_dim=(2, 4, 4))
SD2_LIKE = dict(LEVELS, use_linear_projection=True, down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2)
SDXL_LIKE = dict(LEVELS, transformer_layers_per_block=(1, 2, 2), down_block_types=("DownBlock2D",) + (
    "CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",))
TINY_DIT = dict(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=16,
                audio_cross_attention_dim=32, num_layers=2, caption_channels=32, rope_double_precision=False)


@pytest.mark.parametrize("kind,kw", [("sd", {}), ("sd", SD2_LIKE), ("sdxl", {}), ("sdxl", SDXL_LIKE)])
def test_ldm_map_against_diffusers_converter(kind, kw):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    ref = tiny_unet(kind, **kw)
    sd, names = ref.state_dict(), ldm_unet_key_map(ref.config)
    assert set(names) == set(sd) and len(set(names.values())) == len(sd)
    assert names["time_embedding.linear_1.weight"] == "time_embed.0.weight" and names["conv_out.bias"] == "out.2.bias"
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + names[k]: v for k, v in sd.items()}, dict(ref.config))
    assert set(back) == set(sd)
    assert all(back[k] is v for k, v in sd.items())


def test_ldm_map_refuses_uneven_layers():
    with pytest.raises(ValueError, match="layers_per_block"):
        ldm_unet_key_map(dict(tiny_unet_config("sd"), layers_per_block=(1, 2)), keys=["conv_in.weight"])
    with pytest.raises(ValueError, match="no LDM name"): ldm_unet_key_map(tiny_unet_config("sd"), keys=["x.weight"])


@pytest.mark.parametrize("release", ["2.0", "2.3"])
def test_ltx2_map_against_diffusers_converter(release):
    from diffusers import LTX2VideoTransformer3DModel as Ref
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers
    from diffuse_nb.ltx2_dit_blocks import LTX23_DIT
    torch.manual_seed(0)
    sd = Ref(**(TINY_DIT if release == "2.0" else dict(TINY_DIT, **LTX23_DIT))).state_dict()
    names = ltx2_dit_key_map(list(sd))
    assert len(set(names.values())) == len(sd) and names["time_embed.linear.weight"] == "adaln_single.linear.weight"
    original = {"model.diffusion_model." + names[k]: v for k, v in sd.items()}
    back = convert_ltx2_transformer_to_diffusers(original)
    assert set(back) == set(sd) and all(back[k] is v for k, v in sd.items())


def unet_folder(kw=None):
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(tiny_unet_config("sd", **(kw or {}))).eval()
    d = temp_dir()
    unet.save_pretrained(d / "unet")
    return unet, d


def run(unet):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad(): return unet(x, torch.tensor(3), c).sample


def test_from_pretrained_folder_subfolder_and_alone():
    unet, d = unet_folder()
    save_gguf(unet, d / "unet" / "u.gguf", "Q8_0")
    a = UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="u.gguf")
    b = UNet2DConditionModel.from_pretrained(d / "unet" / "u.gguf", config=d / "unet")
    c = UNet2DConditionModel.from_pretrained(d / "unet" / "u.gguf", config=d, subfolder="unet")
    e = UNet2DConditionModel.from_pretrained(d / "unet" / "u.gguf", config=dict(unet.config), dtype="bfloat16")
    assert not a.training and set(weight_formats(a).values()) == {"gguf"} and len(weight_formats(a)) > 70
    assert a.get_submodule("conv_in").weight.dtype == torch.float32 and e.get_submodule("conv_in").weight.dtype == torch.bfloat16
    ya, ref = run(a), run(unet)
    assert torch.equal(ya, run(b)) and torch.equal(ya, run(c))
    assert 10 * torch.log10((ref.max() - ref.min()) ** 2 / (ya - ref).pow(2).mean()) > 40


def test_ldm_named_file_loads_the_same():
    unet, d = unet_folder()
    save_gguf(unet, d / "unet" / "u.gguf", "Q4_0")
    for prefix in ("", "model.diffusion_model."):
        names = {k: prefix + v for k, v in ldm_unet_key_map(unet.config).items()}
        path = save_gguf(unet, d / "unet" / f"ldm{len(prefix)}.gguf", "Q4_0", names=names)
        assert "input_blocks.0.0.weight" in {n.removeprefix(prefix) for n in read_gguf(path, data=False)}
        ldm = UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file=path.name)
        plain = UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="u.gguf")
        for k, v in plain.state_dict().items(): assert torch.equal(ldm.state_dict()[k], v), k


class _WithConnector(nn.Module):
    "A DiT plus a text-connector tensor, as the original LTX-2 single files store them."
    def __init__(self, dit):
        super().__init__()
        self.dit, self.video_embeddings_connector = dit, nn.Linear(32, 32)


def test_ltx2_original_names_with_connector():
    from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel as DiT
    torch.manual_seed(0)
    dit = DiT.from_config(TINY_DIT).eval()
    names = {"dit." + k: "model.diffusion_model." + v for k, v in ltx2_dit_key_map(list(dit.state_dict())).items()}
    names.update({f"video_embeddings_connector.{p}": f"model.diffusion_model.video_embeddings_connector.{p}"
                  for p in ("weight", "bias")})
    path = save_gguf(_WithConnector(dit), temp_dir() / "ltx.gguf", "Q8_0", names=names)
    key_map, ignore = community_key_map(dit, list(read_gguf(path, data=False)))
    assert key_map["patchify_proj.weight"] == "proj_in.weight" and ignore
    loaded = DiT.from_pretrained(path, config=TINY_DIT)
    assert len(weight_formats(loaded)) > 20
    for name in weight_formats(loaded):
        w, ref = loaded.get_submodule(name).weight, dit.get_submodule(name).weight
        assert (w - ref).abs().max() <= ref.abs().max() / 127 + 1e-6
    assert torch.equal(loaded.scale_shift_table, dit.scale_shift_table)


def test_errors_before_loading(monkeypatch):
    import numpy as np
    unet, d = unet_folder()
    other, _ = unet_folder(dict(cross_attention_dim=64))
    save_gguf(other, d / "unet" / "ctx64.gguf")
    xl = save_gguf(UNet2DConditionModel.from_config(tiny_unet_config("sdxl")), d / "unet" / "xl.gguf")
    w = gguf.GGUFWriter(str(d / "q5.gguf"), "diffuse_nb")
    q5 = gguf.quants.quantize(np.ones((4, 32), np.float32), gguf.GGMLQuantizationType.Q5_1)
    w.add_tensor("conv_in.weight", q5, raw_shape=q5.shape, raw_dtype=gguf.GGMLQuantizationType.Q5_1)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    built = []
    monkeypatch.setattr(UNet2DConditionModel, "from_config", classmethod(lambda cls, c: built.append(c)))
    with pytest.raises(FileNotFoundError, match="no GGUF file 'nope.gguf'"):
        UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="nope.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"): UNet2DConditionModel.from_pretrained(d / "x.gguf")
    with pytest.raises(ValueError, match="pass config="): UNet2DConditionModel.from_pretrained(xl)
    with pytest.raises(ValueError, match="ggml type Q5_1"):
        UNet2DConditionModel.from_pretrained(d / "q5.gguf", config=d / "unet")
    with pytest.raises(TypeError, match="gguf_file"): UNet2DConditionModel.from_pretrained(d, gguf_file=3)
    assert built == []                                      # nothing built so far
    monkeypatch.undo()
    with pytest.raises(ValueError, match="do not match"):
        UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="xl.gguf")
    with pytest.raises(ValueError, match="has shape"):
        UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="ctx64.gguf")


def test_hub_repo_from_the_local_cache(monkeypatch):
    "A Hub repo id resolved offline from a (hand-made) Hugging Face cache: config.json and the GGUF beside it."
    import shutil
    from huggingface_hub import constants
    unet, d = unet_folder()
    save_gguf(unet, d / "unet" / "u.gguf", "Q8_0")
    cache = temp_dir()
    repo = cache / "models--someone--tiny-sd"
    (repo / "refs").mkdir(parents=True); (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(d / "unet", repo / "snapshots" / ("0" * 40) / "unet")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    a = UNet2DConditionModel.from_pretrained("someone/tiny-sd", subfolder="unet", gguf_file="u.gguf")
    b = UNet2DConditionModel.from_pretrained(d, subfolder="unet", gguf_file="u.gguf")
    assert torch.equal(run(a), run(b))
    with pytest.raises(FileNotFoundError, match="not available"):
        UNet2DConditionModel.from_pretrained("someone/tiny-sd", subfolder="unet", gguf_file="other.gguf")
    with pytest.raises(FileNotFoundError, match="hf download"):
        UNet2DConditionModel.from_pretrained("someone/absent", subfolder="unet", gguf_file="u.gguf")
