"Bad-input table and round trips for diffuse_nb.core."
import pytest, torch
from PIL import Image
from diffuse_nb.core import (get_device, get_dtype, make_generator, randn, tensor_to_pil, pil_to_tensor,
                             save_image, read_image_metadata, filename_from_prompt, show_images)

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: get_device("gpu"), ValueError, "'gpu'"),
    (lambda: get_device("cuda:abc"), ValueError, "not a device name"),
    (lambda: get_device(0), TypeError, "device must be"),
    (lambda: get_dtype("float17"), ValueError, "float17"),
    (lambda: get_dtype(3.0), TypeError, "dtype must be"),
    (lambda: make_generator(-1), ValueError, "seed=-1"),
    (lambda: make_generator(1.5), TypeError, "seed must be"),
    (lambda: tensor_to_pil(torch.zeros(3, 4, 4), (0, 255)), ValueError, "value_range"),
    (lambda: tensor_to_pil(torch.zeros(2, 4, 4)), ValueError, "channels"),
    (lambda: tensor_to_pil([1, 2]), TypeError, "torch.Tensor"),
    (lambda: pil_to_tensor("img.png"), TypeError, "PIL.Image"),
    (lambda: filename_from_prompt(3), TypeError, "prompt must be"),
    (lambda: show_images([]), ValueError, "empty"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg): call()

@pytest.mark.skipif(torch.cuda.is_available(), reason="machine has CUDA")
def test_cuda_absent_is_clear():
    with pytest.raises(ValueError, match="CUDA is not available"): get_device("cuda:0")

def test_seed_portable_and_reproducible():
    a = randn((1, 4, 8, 8), 123); b = randn((1, 4, 8, 8), 123); c = randn((1, 4, 8, 8), 124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator("cpu").manual_seed(123)
    assert torch.equal(a, torch.randn((1, 4, 8, 8), generator=g))   # same as diffusers' randn_tensor with a CPU generator

@pytest.mark.parametrize("vr", [(-1, 1), (0, 1)])
def test_pil_round_trip(vr):
    x = torch.rand(2, 3, 8, 8) * (vr[1] - vr[0]) + vr[0]
    imgs = tensor_to_pil(x, vr)
    assert isinstance(imgs, list) and imgs[0].size == (8, 8)
    assert (pil_to_tensor(imgs, vr) - x).abs().max() <= (vr[1] - vr[0]) / 255 / 2 + 1e-6

def test_save_image_metadata_and_no_overwrite(tmp_path):
    p = save_image(Image.new("RGB", (4, 4)), tmp_path / "a.png", metadata={"prompt": "cat", "seed": 7})
    assert read_image_metadata(p) == {"prompt": "cat", "seed": "7"}
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"): save_image(Image.new("RGB", (4, 4), "red"), p)
    assert p.read_bytes() == before
    save_image(Image.new("RGB", (4, 4), "red"), p, overwrite=True); assert p.read_bytes() != before
    with pytest.raises(ValueError, match="PNG"): save_image(Image.new("RGB", (4, 4)), tmp_path / "a.jpg", metadata={"a": 1})

def test_filename_from_prompt(tmp_path):
    p = filename_from_prompt("Hello, World! " * 20, directory=tmp_path)
    assert len(p.stem) <= 50 and set(p.stem) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    p.touch(); q = filename_from_prompt("Hello, World! " * 20, directory=tmp_path)
    assert q != p and q.stem.endswith("_2") and len(q.stem) <= 50
    assert filename_from_prompt("a/../../b", datetime=False).name == "a_b.png"
