"""Every LTX-2 model loaded inside / outside `inference_mode`, `no_grad` and grad, then run in each of them:
the same numbers as the reference every time, ordinary (trainable) weights. The tiny reference builders are the
ones each model's own test file uses."""
import pytest
import torch

pytest.importorskip("diffusers"); pytest.importorskip("transformers")
import test_gemma3, test_ltx2_connectors, test_ltx2_dit, test_ltx2_vae   # noqa: E402  (sibling test modules)
from diffuse_nb.gemma3 import Gemma3TextModel                              # noqa: E402
from diffuse_nb.ltx2_connectors import LTX2TextConnectors                  # noqa: E402
from diffuse_nb.ltx2_dit import LTX2VideoTransformer3DModel               # noqa: E402
from diffuse_nb.ltx2_vae import AutoencoderKLLTX2Video                     # noqa: E402
from diffuse_nb.testing import save_reference                             # noqa: E402

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}


def _gemma():
    ids, am = test_gemma3.left_padded(lengths=(12, 5), L=12)
    return test_gemma3.reference(), Gemma3TextModel, lambda m: m(ids, attention_mask=am).last_hidden_state


def _connectors():
    h, mask = test_ltx2_connectors.text_batch("left")
    return (test_ltx2_connectors.tiny_reference(test_ltx2_connectors.CONFIGS["ltx23"]), LTX2TextConnectors,
            lambda m: m(h, mask)[0])


def _dit():
    cfg = test_ltx2_dit.CONFIGS["ltx23"]
    kw = test_ltx2_dit.dit_inputs(cfg)
    return test_ltx2_dit.tiny_reference(cfg), LTX2VideoTransformer3DModel, lambda m: m(**kw)[0]


def _video_vae():
    z = torch.randn(test_ltx2_vae.SHAPES["A"][1], generator=torch.Generator().manual_seed(0))
    return test_ltx2_vae.reference("A"), AutoencoderKLLTX2Video, lambda m: m.decode(z)[0]


CASES = {"gemma3": _gemma, "ltx2_connectors": _connectors, "ltx2_dit": _dit, "ltx2_vae": _video_vae}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("load_mode", list(MODES))
def test_loaded_and_run_in_every_mode(case, load_mode):
    ref, cls, call = CASES[case]()
    with torch.no_grad(): want = call(ref)
    path = save_reference(ref)
    with MODES[load_mode](): m = cls.from_pretrained(path)
    assert not any(p.is_inference() for p in m.parameters()), "weights must be ordinary tensors"
    for run_mode, ctx in MODES.items():
        with ctx(): got = call(m)
        assert (got.detach() - want).abs().max() <= 1e-5, f"{case}: loaded under {load_mode}, run under {run_mode}"
    got.float().square().mean().backward()                                # trainable after loading in any mode
    assert any(p.grad is not None for p in m.parameters())
