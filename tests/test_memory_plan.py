"Tests for diffuse_nb.memory_plan: exact encoded bytes, component sizes, meta activation counts, the strategy table."
import copy, warnings

import pytest
import torch
from torch import nn

from diffuse_nb.memory_plan import (GiB, WEIGHT_FORMATS, LiveTensorBytes, component_size, encoded_bytes, measure,
                                    memory_plan, plan_table, unet_activation_bytes)
from diffuse_nb.quantize import apply_layerwise_casting, quantize_, weight_bytes
from diffuse_nb.testing import tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_encoded_bytes_equal_real_encodings(kind):
    with torch.device("meta"): meta = UNet2DConditionModel.from_config(tiny_unet_config(kind))
    real = UNet2DConditionModel.from_config(tiny_unet_config(kind)).eval().half()
    assert encoded_bytes(meta, "float16") == weight_bytes(real)
    assert encoded_bytes(meta, "float32") == 2 * weight_bytes(real)
    assert encoded_bytes(meta, "float8") == weight_bytes(apply_layerwise_casting(copy.deepcopy(real),
                                                                                 torch.float8_e4m3fn))
    for fmt in ("int8", "nf4"):
        assert encoded_bytes(meta, fmt) == weight_bytes(quantize_(copy.deepcopy(real), fmt))
    assert encoded_bytes(meta, "int8", torch.float32) == weight_bytes(quantize_(real.float(), "int8"))


def test_component_size_and_measure():
    seq = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 16), nn.LayerNorm(16))
    s = component_size(seq, "seq")
    assert s.params == 8 * 16 + 16 + 16 * 16 + 16 + 32 and s.leaf_bytes == (16 * 16 + 16) * 2
    assert (s.block_bytes, s.rest_bytes, s.n_blocks) == (544, 0, 3) and set(s.bytes) == set(WEIGHT_FORMATS)

    class Pipe: unet, vae, text_encoder = seq, None, nn.Linear(2, 2)
    assert set(measure(Pipe())) == {"unet", "text_encoder"}
    assert set(measure({"a": seq})) == {"a"} and list(measure(seq)) == ["Sequential"]
    with pytest.raises(TypeError, match="measure needs"): measure([seq])
    with pytest.raises(ValueError, match="weight_format='int4'"): encoded_bytes(seq, "int4")


def test_live_tensor_bytes_counts_views_and_frees():
    with LiveTensorBytes() as meter:
        a = torch.ones(1024, device="meta"); b = a * 2; c = b + 1
        del b; d = c.view(32, 32) * 3
    assert meter.peak == 3 * 4096


def test_activations_scale_with_batch_and_pixels():
    with torch.device("meta"): unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    a1 = unet_activation_bytes(unet, 128, 128, 1)
    assert unet_activation_bytes(unet, 128, 128, 2) == pytest.approx(2 * a1, rel=0.05)
    assert unet_activation_bytes(unet, 256, 256, 1) > 3 * a1
    assert unet_activation_bytes(unet, 128, 128, 1, torch.float32) == pytest.approx(2 * a1, rel=0.05)


def test_memory_plan_fits_and_order():
    with torch.device("meta"): unet = UNet2DConditionModel.from_config(tiny_unet_config("sd"))
    acts = {"unet": 10 * 2**20}
    plan = memory_plan({"unet": unet}, vram_gb=100, ram_gb=100, activations=acts)
    assert len(plan) == 20 and all(s.fits for s in plan)
    assert (plan[0].offload, plan[0].weight_format) == ("all on GPU", "float16")
    assert plan[0].vram == encoded_bytes(unet, "float16") + acts["unet"]
    need = encoded_bytes(unet, "nf4") + acts["unet"] + component_size(unet).leaf_bytes
    tight = memory_plan({"unet": unet}, vram_gb=need / GiB + 1e-6,
                        ram_gb=0.0, activations=acts)
    fitting = [s for s in tight if s.fits]
    assert fitting and all(s.offload == "all on GPU" and s.ram == 0 for s in fitting)
    assert fitting[0].weight_format != "float16" and not tight[-1].fits
    assert "recommended" in plan_table(tight) and plan_table(tight, only_fitting=True).count("\n") == 1 + len(fitting)
