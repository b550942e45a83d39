"Tests for diffuse_nb.regional_compile: compiled blocks equal eager ones (UNet, LTX-2 DiT), with offload and prepack."
import pytest
import torch

from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel
from diffuse_nb.ltx2_dit_blocks import LTX2VideoTransformer3DConfig
from diffuse_nb.ltx2_dit_offload import DiTOffloader
from diffuse_nb.offload import BlockOffloader
from diffuse_nb.optimize import prepack_for_cpu
from diffuse_nb.regional_compile import (REPEATED_BLOCKS, compile_repeated_blocks, compiled_blocks, declared_blocks,
                                         repeated_blocks, uncompile_repeated_blocks)
from diffuse_nb.testing import max_abs_err, randomize_, tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel

TINY_DIT = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
                audio_cross_attention_dim=8, num_layers=2, caption_channels=32, rope_double_precision=False)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset(); torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def tiny_unet():
    return randomize_(UNet2DConditionModel(**tiny_unet_config())).eval()


def unet_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor(10), torch.randn(2, 5, 32, generator=g)


def tiny_dit():
    return randomize_(LTX2VideoTransformer3DModel(LTX2VideoTransformer3DConfig(**TINY_DIT)), std=0.2).eval()


def dit_inputs():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.long); mask[0, :2] = 0
    t = torch.tensor([300.0, 700.0])
    return dict(hidden_states=torch.randn(2, 60, 4, generator=g), audio_hidden_states=torch.randn(2, 7, 4, generator=g),
                encoder_hidden_states=torch.randn(2, 6, 32, generator=g),
                audio_encoder_hidden_states=torch.randn(2, 6, 32, generator=g), timestep=t, sigma=t,
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=3, height=4, width=5,
                audio_num_frames=7)


def test_declared_and_found_blocks():
    unet, dit = tiny_unet(), tiny_dit()
    assert declared_blocks(unet) == REPEATED_BLOCKS["UNet2DConditionModel"] == ("BasicTransformerBlock",)
    assert declared_blocks(dit) == ("LTX2VideoTransformerBlock",)
    assert len(repeated_blocks(unet)) == 4 and len(repeated_blocks(dit)) == 2
    assert len(repeated_blocks(unet, "ResnetBlock2D")) == len(repeated_blocks(unet, ["ResnetBlock2D"])) > 4
    class Declares(torch.nn.Sequential): _repeated_blocks = ["Linear"]
    assert [n for n, _ in repeated_blocks(Declares(torch.nn.Linear(2, 2), torch.nn.ReLU()))] == ["0"]
    prepack_for_cpu(unet)                                                     # FastBasicTransformerBlock still counts
    assert len(repeated_blocks(unet)) == 4


def test_bad_input_fails_before_compiling():
    unet = tiny_unet()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module; got str"): compile_repeated_blocks("unet")
    with pytest.raises(ValueError, match="Sequential declares no repeated blocks"):
        compile_repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"blocks=\['Nope'\]: no sub-module.*BasicTransformerBlock"):
        compile_repeated_blocks(unet, blocks="Nope")
    with pytest.raises(TypeError): compile_repeated_blocks(unet, fullgrap=True)    # a misspelt torch.compile option
    off = BlockOffloader(unet, device="cpu").attach()
    with pytest.raises(ValueError, match="freezing"): compile_repeated_blocks(unet, options={"freezing": True})
    off.detach()
    unet.down_blocks[1].attentions[0].transformer_blocks[0].forward = lambda *a, **k: None
    with pytest.raises(ValueError, match="already has its own `forward`"): compile_repeated_blocks(unet)
    assert compiled_blocks(unet) == [] and not any("_compiled_region" in m.__dict__ for m in unet.modules())


def test_unet_compiled_equals_eager_with_block_offload():
    unet, (x, t, ctx) = tiny_unet(), unet_inputs()
    with torch.no_grad():
        eager = unet(x, t, ctx).sample
        assert compile_repeated_blocks(unet) is unet and len(compiled_blocks(unet)) == 4
        compiled = unet(x, t, ctx).sample
        assert max_abs_err(compiled, eager) <= 1e-5
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1       # four blocks, one graph
        off = BlockOffloader(unet, device="cpu").attach()
        assert max_abs_err(unet(x, t, ctx).sample, eager) <= 1e-5
        off.detach()
        with torch.no_grad(): unet.down_blocks[1].attentions[0].transformer_blocks[0].ff.net[2].weight.add_(0.5)
        moved = unet(x, t, ctx).sample                                             # the weights are inputs, not constants
        assert max_abs_err(moved, eager) > 1e-3
        uncompile_repeated_blocks(unet)
        assert compiled_blocks(unet) == [] and max_abs_err(unet(x, t, ctx).sample, moved) <= 1e-5


@pytest.mark.slow
def test_prepacked_unet_compiled_equals_eager():
    unet, (x, t, ctx) = tiny_unet(), unet_inputs()
    with torch.no_grad():
        eager = unet(x, t, ctx).sample
        compile_repeated_blocks(prepack_for_cpu(unet, example_hw=(16, 16)))
        assert max_abs_err(unet(x, t, ctx).sample, eager) <= 1e-5


@pytest.mark.slow
def test_dit_compiled_equals_eager_with_offload():
    dit, inputs = tiny_dit(), dit_inputs()
    with torch.no_grad():
        eager = dit(**inputs).to_tuple()
        compile_repeated_blocks(dit)
        assert max_abs_err(dit(**inputs).to_tuple(), eager) <= 1e-5
        assert max_abs_err(DiTOffloader(dit, device="cpu")(**inputs).to_tuple(), eager) <= 1e-5
