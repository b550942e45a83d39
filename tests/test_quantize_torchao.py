"Tests for quantize_(..., backend='torchao'): torchao's int8 weight-only linears beside our int8 convolutions."
import copy, sys

import pytest
import torch
from torch import nn

from diffuse_nb.quantize import psnr, quantize_, restore_, weight_bytes, weight_formats


def mixed(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.Flatten(2), nn.Linear(64, 128), nn.GELU(),
                         nn.Linear(128, 64)).eval()


def test_refusals_before_anything_changes(monkeypatch):
    m = mixed()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="int8' only"): quantize_(m, "nf4", skip=(), backend="torchao")
    with pytest.raises(ValueError, match="backend='bnb'"): quantize_(m, skip=(), backend="bnb")
    monkeypatch.setitem(sys.modules, "torchao", None); monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ImportError, match="pip install torchao"): quantize_(m, skip=(), backend="torchao")
    assert weight_formats(m) == {}
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_torchao_int8_linears_and_our_convs():
    pytest.importorskip("torchao")
    m, x = mixed(), torch.randn(2, 4, 8, 8)
    with torch.no_grad(): ref = m(x)
    ours, ao = quantize_(copy.deepcopy(m), skip=()), quantize_(copy.deepcopy(m), skip=(), backend="torchao")
    formats = weight_formats(ao)
    assert formats["0"] == "int8" and formats["2"].startswith("torchao") and formats["4"].startswith("torchao")
    with torch.no_grad(): y_ours, y_ao = ours(x), ao(x)
    assert psnr(y_ao, ref) > 40 and abs(psnr(y_ao, ref) - psnr(y_ours, ref)) < 3
    assert weight_bytes(ao) < 0.3 * weight_bytes(m)                    # codes + scales, not float32
    assert abs(weight_bytes(ao) - weight_bytes(ours)) < 0.05 * weight_bytes(ours)
    with pytest.raises(ValueError, match="already stored"): quantize_(ao, skip=())
    restore_(ao)
    assert weight_formats(ao) == {} and type(ao[2].weight) is nn.Parameter
    with torch.no_grad(): assert psnr(ao(x), ref) > 40
