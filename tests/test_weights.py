"Checkpoint loading: real save layouts, corrupt inputs (each fails fast), offline behaviour, runtime-only imports."
import copy, json, os, subprocess, sys, time
import pytest, torch
from torch import nn
from safetensors.torch import save_file
from diffuse_nb.weights import (CheckpointError, SafetensorsFile, find_checkpoint, load_state_dict, load_weights,
                                resolve_model_dir, load_config, load_model_index, convert_to_safetensors, select_weight_files)
from diffuse_nb.testing import tiny_unet, tiny_unet_config, tiny_clip, save_reference

def _fast(fn, exc, match, limit=1.0):
    t = time.perf_counter()
    with pytest.raises(exc, match=match): fn()
    dt = time.perf_counter() - t
    assert dt < limit, f"took {dt:.2f}s"

@pytest.fixture(scope="module")
def ref():
    from diffusers.utils import logging; logging.set_verbosity_error()
    return tiny_unet("sd")

@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("shard", [None, "200KB"])
@pytest.mark.parametrize("target", ["fresh", "meta"])
def test_layouts_round_trip(ref, variant, shard, target):
    from diffusers import UNet2DConditionModel
    model = copy.deepcopy(ref).to(torch.float16) if variant else ref
    kw = {"max_shard_size": shard} if shard else {}
    d = save_reference(model, variant=variant, **kw)
    if shard: assert len(list(d.glob("*.safetensors"))) > 1
    dt = torch.float16 if variant else torch.float32
    if target == "meta":
        with torch.device("meta"): m = UNet2DConditionModel(**tiny_unet_config("sd"))
    else: m = UNet2DConditionModel(**tiny_unet_config("sd")).to(dt)
    load_weights(m, d, variant=variant)
    want = model.state_dict(); got = m.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == dt for k in want)

def test_transformers_layout_and_dtype_cast():
    ref = tiny_clip()
    d = save_reference(ref, max_shard_size="1MB")
    assert (d / "model.safetensors.index.json").exists() and len(list(d.glob("*.safetensors"))) > 1
    sd = load_state_dict(d, dtype="bf16")
    want = {k: v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    assert sd.keys() == want.keys()
    assert all(torch.equal(sd[k], v.to(torch.bfloat16)) for k, v in want.items())

def test_meta_leftovers_are_an_error(tmp_path):
    "A module whose buffer is not in the checkpoint would keep a meta tensor: refuse instead of failing later."
    class WithBuffer(nn.Linear):
        def __init__(self): super().__init__(2, 2); self.register_buffer("ids", torch.arange(2), persistent=False)
    save_file(nn.Linear(2, 2).state_dict(), tmp_path / "m.safetensors")
    with torch.device("meta"): m = WithBuffer()
    with pytest.raises(CheckpointError, match="still on the meta device: ids"): load_weights(m, tmp_path / "m.safetensors")

def _write(tmp_path, sd, name="model.safetensors"):
    p = tmp_path / name; save_file(sd, p); return p

def test_truncated_file(tmp_path):
    p = _write(tmp_path, {"w": torch.randn(64, 64)})
    p.write_bytes(p.read_bytes()[:-100])
    _fast(lambda: load_state_dict(p), CheckpointError, "truncated")
    p.write_bytes(b"\x01\x02")
    _fast(lambda: load_state_dict(p), CheckpointError, "too short")

def test_wrong_shape_and_keys(tmp_path):
    net = nn.Linear(4, 3)
    p = _write(tmp_path, {"weight": torch.zeros(3, 5), "bias": torch.zeros(3), "extra": torch.zeros(1)})
    with pytest.raises(CheckpointError) as e: load_weights(net, p)
    msg = str(e.value)
    assert "1 unexpected: extra" in msg and "weight: checkpoint (3, 5) vs model (3, 4)" in msg
    p2 = _write(tmp_path, {"weight": torch.zeros(3, 4)}, "m2.safetensors")
    _fast(lambda: load_weights(nn.Linear(4, 3), p2), CheckpointError, "1 missing: bias")

def test_wrong_shape_fails_before_reading(tmp_path, monkeypatch):
    p = _write(tmp_path, {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)})
    monkeypatch.setattr(SafetensorsFile, "read", lambda *a, **k: pytest.fail("bytes were read before validation"))
    with pytest.raises(CheckpointError): load_weights(nn.Linear(4, 3), p)

def test_missing_shard(ref):
    d = save_reference(ref, max_shard_size="200KB")
    sorted(d.glob("*-00002-of-*.safetensors"))[0].unlink()
    _fast(lambda: load_state_dict(d), FileNotFoundError, "missing")

def test_pickle_refused(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.bin")
    _fast(lambda: load_state_dict(tmp_path / "model.bin"), CheckpointError, "convert_to_safetensors")
    _fast(lambda: load_state_dict(tmp_path), CheckpointError, "pickle-based")     # a folder with only a .bin
    out = convert_to_safetensors(tmp_path / "model.bin")
    assert torch.equal(load_state_dict(out)["w"], torch.zeros(2))
    with pytest.raises(FileExistsError, match="overwrite=True"): convert_to_safetensors(tmp_path / "model.bin")

def test_absent_repo_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fast(lambda: resolve_model_dir("someone/not-a-real-model-xyz", subfolder="unet"), FileNotFoundError,
          "hf download someone/not-a-real-model-xyz")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    _fast(lambda: resolve_model_dir("someone/not-a-real-model-xyz", local_files_only=True), FileNotFoundError, "not in the local")

def test_hf_cache_layout(tmp_path, monkeypatch, ref):
    "A repo id resolves from a Hugging Face cache folder laid out as snapshot_download leaves it."
    cache = tmp_path / "hub"; snap = cache / "models--acme--tiny-sd" / "snapshots" / ("0" * 40)
    save_reference(ref, snap / "unet"); save_reference(copy.deepcopy(ref).half(), snap / "unet", variant="fp16")
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "safety_checker": [None, None]}))
    (cache / "models--acme--tiny-sd" / "refs").mkdir(); (cache / "models--acme--tiny-sd" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache)); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c; monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    d = resolve_model_dir("acme/tiny-sd", subfolder="unet")
    assert d == snap / "unet"
    assert load_config("acme/tiny-sd", subfolder="unet")["block_out_channels"] == [32, 64]
    assert load_model_index("acme/tiny-sd") == {"unet": ("diffusers", "UNet2DConditionModel")}
    ck = find_checkpoint(d, variant="fp16"); assert all(ck.dtype(k) == torch.float16 for k in ck.keys())

def test_local_path_errors(tmp_path):
    _fast(lambda: resolve_model_dir(tmp_path / "nope"), FileNotFoundError, "neither an existing folder")
    (tmp_path / "m").mkdir()
    _fast(lambda: resolve_model_dir(tmp_path, subfolder="unet"), FileNotFoundError, "no subfolder 'unet'")
    _fast(lambda: load_state_dict(tmp_path / "m"), FileNotFoundError, "no .safetensors")
    with pytest.raises(TypeError, match="path_or_repo_id"): resolve_model_dir(42)

def test_variant_fallback_warns(tmp_path):
    _write(tmp_path, {"w": torch.ones(2)})
    with pytest.warns(UserWarning, match="no 'fp16' variant"): ck = find_checkpoint(tmp_path, "fp16")
    assert ck.keys() == ["w"]

def test_select_weight_files_ambiguous():
    with pytest.raises(CheckpointError, match="several weight files"): select_weight_files(["a.safetensors", "b.safetensors"])

def test_runtime_imports_without_reference_libraries(tmp_path):
    "The package imports and its core/weights functions run when diffusers/transformers cannot be imported."
    code = r'''
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("diffusers", "transformers", "accelerate"): raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import importlib, pkgutil, torch, diffuse_nb
from torch import nn
mods = [m.name for m in pkgutil.iter_modules(diffuse_nb.__path__) if not m.name.startswith("_") and m.name != "testing"]
for m in mods: importlib.import_module("diffuse_nb." + m)
from diffuse_nb.core import randn, tensor_to_pil, save_image
from diffuse_nb.weights import load_weights
from safetensors.torch import save_file
save_file(nn.Linear(2, 2).state_dict(), sys.argv[1] + "/m.safetensors")
with torch.device("meta"): net = nn.Linear(2, 2)
load_weights(net, sys.argv[1] + "/m.safetensors")
save_image(randn((3, 8, 8), 0).clamp(-1, 1), sys.argv[1] + "/x.png")
import diffuse_nb.testing                     # importable too: references are imported lazily
assert "diffusers" not in sys.modules and "transformers" not in sys.modules
print("ok", len(mods), "modules")
'''
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ok")

def _fake_hub(monkeypatch, remote, cache, calls):
    "Serve `remote` (a local folder laid out like a Hub repo) through list_repo_files/snapshot_download."
    import fnmatch, shutil, huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    def list_repo_files(repo_id, revision=None, **kw):
        return sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file())
    def snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False, **kw):
        snap = cache / repo_id.replace("/", "--")
        if local_files_only:
            if not snap.exists(): raise LocalEntryNotFoundError("not cached")
            return str(snap)
        calls.append(list(allow_patterns))
        for name in list_repo_files(repo_id):
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snap / name).parent.mkdir(parents=True, exist_ok=True); shutil.copy(remote / name, snap / name)
        return str(snap)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

@pytest.mark.parametrize("variant, shard", [(None, None), ("fp16", None), ("fp16", "200KB"), (None, "200KB")])
def test_download_only_what_the_component_needs(tmp_path, monkeypatch, ref, variant, shard):
    remote, cache, calls = tmp_path / "remote", tmp_path / "cache", []
    kw = {"max_shard_size": shard} if shard else {}
    save_reference(ref, remote / "unet", **kw); save_reference(copy.deepcopy(ref).half(), remote / "unet", variant="fp16", **kw)
    save_reference(ref, remote / "other")                                    # another component: must not be fetched
    _fake_hub(monkeypatch, remote, cache, calls)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    d = resolve_model_dir("acme/tiny", subfolder="unet", variant=variant)
    got = sorted(p.name for p in d.iterdir())
    assert not (cache / "acme--tiny" / "other").exists(), "fetched a component that was not asked for"
    weights = [n for n in got if n.endswith(".safetensors")]
    assert weights and all(("fp16" in n) == (variant == "fp16") for n in weights), got
    sd = load_state_dict(d, variant=variant)
    want = copy.deepcopy(ref).half().state_dict() if variant else ref.state_dict()
    assert all(torch.equal(sd[k], want[k]) for k in want)
    n_calls = len(calls); resolve_model_dir("acme/tiny", subfolder="unet", variant=variant)
    assert len(calls) == n_calls, "a cached component was downloaded again"

def test_mmap_views_and_private_writes(tmp_path):
    "mmap=True adopts zero-copy views; writes stay private; casts and misaligned data fall back to reading."
    w = torch.randn(8, 8)
    p = _write(tmp_path, {"weight": w, "bias": torch.zeros(8)})
    before = p.read_bytes()
    with torch.device("meta"): m = nn.Linear(8, 8)
    load_weights(m, p)                                                   # default: mmap on the CPU
    assert torch.equal(m.weight, w)
    with torch.no_grad(): m.weight.mul_(0)                              # copy-on-write: the file is untouched
    assert p.read_bytes() == before and torch.equal(load_state_dict(p)["weight"], w)
    with torch.device("meta"): m16 = nn.Linear(8, 8)
    load_weights(m16, p, dtype="fp16"); assert m16.weight.dtype == torch.float16 and torch.equal(m16.weight, w.half())
    sf = SafetensorsFile(p)
    sf.data_start += 1                                                   # pretend the data were misaligned
    assert sf.view("weight") is None
