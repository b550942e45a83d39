import dataclasses, time

import pytest
import torch
import torch.nn as nn

from diffuse_nb.memory import (PROFILE_NAMES, PROFILE_THRESHOLDS, MemoryProfile, auto_devices, profile_thresholds,
                               ram_info, resolve_profile, select_profile, vram_info, PeakRSS, process_rss,
                               profile_table)
from diffuse_nb.offload import (BlockOffloader, ComponentManager, default_blocks, sequential_cfg_forward,
                                vram_report)
from diffuse_nb.testing import randomize_, tiny_unet_config
from diffuse_nb.unet import UNet2DConditionModel


def pred(out):                                                     # our UNet: a tensor, or (sample,) / .sample
    return out if torch.is_tensor(out) else out[0]


def tiny(kind="sd", seed=0):
    torch.manual_seed(seed)
    return randomize_(UNet2DConditionModel.from_config(tiny_unet_config(kind)), seed=seed).eval()


def inputs(kind, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * B, 4, 16, 16, generator=g)
    ctx = torch.randn(2 * B, 7, 64 if kind == "sdxl" else 32, generator=g)
    add = (dict(text_embeds=torch.randn(2 * B, 32, generator=g), time_ids=torch.randn(2 * B, 6, generator=g))
           if kind == "sdxl" else None)
    return x, ctx, add


# --- detection ---------------------------------------------------------------------------------------------------
def test_vram_info_without_gpu():
    if torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    assert vram_info() == (0.0, 0.0)
    assert vram_info("cuda:3") == (0.0, 0.0)
    assert vram_info("cpu") == (0.0, 0.0)


def test_ram_info():
    avail, total = ram_info()
    assert 0 < avail <= total


@pytest.mark.parametrize("reset", [True, False])
def test_peak_rss_sees_a_freed_allocation(reset):
    meter = PeakRSS(reset=reset).start()
    base = process_rss()
    x = torch.ones(32 * 2**20); time.sleep(0.05); del x            # 128 MiB touched, held, freed
    assert meter.stop() - base > 100 * 2**20


def test_peak_rss_leaves_the_process_high_water_mark_alone():
    from diffuse_nb.memory import _read_hwm
    if _read_hwm() is None: pytest.skip("no /proc/self/status here")
    x = torch.ones(64 * 2**20); del x                              # set a high mark well above what follows
    hwm = _read_hwm()
    meter = PeakRSS().start(); y = torch.ones(1000); meter.stop()
    assert _read_hwm() == hwm and not meter.exact                  # not a new high: sampled, mark untouched


def test_memory_timeline_and_plot():
    import matplotlib; matplotlib.use("Agg")
    from diffuse_nb.offload import MemoryTimeline, plot_memory_timeline, PhaseRecord
    with MemoryTimeline(interval=0.002) as tl:
        x = torch.ones(8 * 2**20); time.sleep(0.03); del x
    assert len(tl.times) == len(tl.values) >= 3 and max(tl.values) >= tl.values[0]
    rec = PhaseRecord("work", seconds=0.01, start=tl.start)
    ax = plot_memory_timeline(tl, [rec], unit="MiB", relative=True)
    assert ax.get_ylabel() == "RSS above start, MiB" and ax.texts[0].get_text() == "work"


# --- profile selection --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd15", "sd21", "sdxl"])
def test_select_profile_each_side_of_every_threshold(kind):
    th = profile_thresholds(kind)
    order = list(PROFILE_NAMES)
    for i, name in enumerate(order[:-1]):
        assert select_profile(kind, th[name]) == name
        assert select_profile(kind, th[name] - 1e-3) == order[i + 1]
    assert select_profile(kind, 0.0) == "cpu_only"
    assert select_profile(kind, 1000.0) == "full_gpu"


def test_sdxl_thresholds_are_diffusers_r_package_ones():
    th = PROFILE_THRESHOLDS["sdxl"]
    assert (th["full_gpu"], th["balanced"], th["gpu_poor"]) == (16.0, 10.0, 6.0)
    for kind in ("sd15", "sd21"):                                   # smaller models need less
        assert all(PROFILE_THRESHOLDS[kind][n] <= th[n] for n in PROFILE_NAMES)


@pytest.mark.parametrize("kind", ["sd21", "sdxl"])
@pytest.mark.parametrize("vram", [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 12.0, 20.0])
def test_resolve_auto_uses_injected_vram(kind, vram):
    p = resolve_profile("auto", kind, vram_gb=vram, gpu="cpu")
    assert p.name == select_profile(kind, vram)
    assert p.dtype == torch.float32 and p.cpu_dtype == torch.float32      # never half precision on the CPU


def test_profiles_place_components_as_documented():
    P = {n: resolve_profile(n, "sdxl", gpu="cpu") for n in PROFILE_NAMES}
    assert set(P["full_gpu"].offload.values()) == {"none"} and P["full_gpu"].cfg_mode == "batched"
    assert P["balanced"].cleanup == "phase" and P["balanced"].cfg_mode == "batched"
    assert P["gpu_poor"].offload["unet"] == "model" and P["gpu_poor"].cfg_mode == "sequential"
    assert P["gpu_poor"].vae_tiling
    assert P["extreme"].offload["unet"] == "block" and P["extreme"].cleanup == "step" and P["extreme"].vae_tiling
    assert P["cpu_only"].cpu_prepack and not any(P[n].cpu_prepack for n in PROFILE_NAMES[:-1])
    # the roles, with a fake GPU name (built without the existence check)
    from diffuse_nb.memory import _build_profile
    b = _build_profile("balanced", "sdxl", "cuda:0")
    assert b.devices == {"text_encoder": "cpu", "text_encoder_2": "cpu", "unet": "cuda:0", "vae": "cuda:0"}
    assert b.dtype == torch.float16
    g = _build_profile("gpu_poor", "sd21", "cuda:0")
    assert g.devices == {"text_encoder": "cpu", "unet": "cuda:0", "vae": "cuda:0"} and g.offload["vae"] == "model"
    c = _build_profile("cpu_only", "sdxl", "cuda:0")
    assert set(c.devices.values()) == {"cpu"} and c.dtype == torch.float32


def test_resolve_profile_overrides():
    p = resolve_profile("full_gpu", "sd21", gpu="cpu", dtype="bf16")
    assert p.dtype == torch.bfloat16 and p.cpu_dtype == torch.bfloat16           # asked for explicitly
    q = resolve_profile("extreme", "sdxl", gpu="cpu", devices={"unet": "cpu"})
    assert q.offload["unet"] == "none"                                            # sent to the CPU: not offloaded
    custom = dataclasses.replace(q, name="mine", cfg_mode="batched")
    assert resolve_profile(custom, "sdxl").name == "mine"


@pytest.mark.parametrize("call, message", [
    (lambda: resolve_profile("fastest", "sdxl"), "profile='fastest'"),
    (lambda: resolve_profile("auto", "sd3"), "model_kind='sd3'"),
    (lambda: resolve_profile("cpu_only", "sd21", devices={"text_encoder_2": "cpu"}), "text_encoder_2"),
    (lambda: resolve_profile("cpu_only", "sdxl", devices={"unet": "cuda:7"}), "cuda:7"),
    (lambda: resolve_profile("cpu_only", "sdxl", devices={"unet": "tpu"}), "tpu"),
    (lambda: resolve_profile("cpu_only", "sdxl", dtype="float13"), "float13"),
    (lambda: select_profile("sdxl", -2), "vram_gb=-2"),
    (lambda: auto_devices("sdxl", "fast"), "strategy='fast'"),
])
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


def test_gpu_profile_without_gpu_fails_clearly():
    if torch.cuda.is_available(): pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_profile("balanced", "sdxl")


def test_memory_profile_checks_its_fields():
    with pytest.raises(ValueError, match="cfg_mode"):
        MemoryProfile("x", {"unet": "cpu"}, {"unet": "none"}, cfg_mode="twice")
    with pytest.raises(ValueError, match="offload"):
        MemoryProfile("x", {"unet": "cpu"}, {"unet": "layer"})


def test_auto_devices_several_gpus():
    d = auto_devices("sdxl", "balanced", gpus=["cuda:0", "cuda:1"])
    assert d == {"text_encoder": "cuda:1", "text_encoder_2": "cuda:1", "unet": "cuda:0", "vae": "cuda:1"}
    assert auto_devices("sd21", "full_gpu") == {"text_encoder": "cuda", "unet": "cuda", "vae": "cuda"}
    assert set(auto_devices("sdxl", "cpu_only", gpus=["cuda:0", "cuda:1"]).values()) == {"cpu"}


# --- sequential CFG -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_sequential_cfg_equals_batched(kind):
    unet = tiny(kind)
    x, ctx, add = inputs(kind)
    t = torch.tensor([10, 10, 700, 700])
    with torch.no_grad():
        ref = pred(unet(x, t, ctx, added_cond_kwargs=add))
        seq = sequential_cfg_forward(unet, x, t, ctx, added_cond_kwargs=add)
        seq_scalar_t = sequential_cfg_forward(unet, x, 10, ctx, added_cond_kwargs=add)
        ref_scalar_t = pred(unet(x, 10, ctx, added_cond_kwargs=add))
    assert (ref - seq).abs().max() < 1e-5
    assert (ref_scalar_t - seq_scalar_t).abs().max() < 1e-5


def test_sequential_cfg_accepts_tuple_outputs_and_rejects_odd_batches():
    unet = tiny("sd")
    x, ctx, _ = inputs("sd", B=1)
    with torch.no_grad():
        a = sequential_cfg_forward(lambda *a, **k: (pred(unet(*a, **k)),), x, 10, ctx)
        b = pred(unet(x, 10, ctx))
    assert (a - b).abs().max() < 1e-5
    with pytest.raises(ValueError, match="even"):
        sequential_cfg_forward(unet, x[:1], 10, ctx[:1])


# --- block offloader ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
@pytest.mark.parametrize("prefetch", [True, False])
def test_block_offloader_on_cpu_is_invisible(kind, prefetch):
    unet = tiny(kind)
    x, ctx, add = inputs(kind)
    before = {n: (p.data_ptr(), p.device, p.dtype) for n, p in unet.state_dict(keep_vars=True).items()}
    with torch.no_grad(): ref = pred(unet(x, 10, ctx, added_cond_kwargs=add))
    off = BlockOffloader(unet, device="cpu", prefetch=prefetch).attach()
    with torch.no_grad():
        out1 = pred(unet(x, 10, ctx, added_cond_kwargs=add))
        out2 = pred(unet(x, 10, ctx, added_cond_kwargs=add))              # second forward: the recorded order
    assert torch.equal(ref, out1) and torch.equal(ref, out2)
    n = len(off.blocks)
    assert off.stats["loads"] == 2 * n                              # every block in and out once per forward
    assert all(b.state == "home" for b in off.blocks)
    off.detach()
    after = {n: (p.data_ptr(), p.device, p.dtype) for n, p in unet.state_dict(keep_vars=True).items()}
    assert after == before
    assert not unet._forward_pre_hooks and not unet.mid_block._forward_hooks


def test_block_offloader_keeps_at_most_current_and_next_block():
    unet = tiny("sdxl")
    x, ctx, add = inputs("sdxl")
    off = BlockOffloader(unet, device="cpu").attach()
    loaded = []
    hooks = [b.module.register_forward_pre_hook(lambda m, a: loaded.append(
        [b.name for b in off.blocks if b.state == "loaded"])) for b in off.blocks[1:]]
    with torch.no_grad(): pred(unet(x, 10, ctx, added_cond_kwargs=add))
    for h in hooks: h.remove()
    assert max(len(l) for l in loaded) <= 3                        # the model's own modules + current + next
    sizes = sorted(b.nbytes for b in off.blocks[1:])
    assert off.stats["peak_resident_bytes"] <= off.blocks[0].nbytes + sizes[-1] + sizes[-2]
    off.detach()


def test_block_offloader_weights_rest_at_home_between_forwards():
    unet = tiny("sd")
    x, ctx, _ = inputs("sd")
    off = BlockOffloader(unet, device="cpu").attach()
    homes = [h.data_ptr() for b in off.blocks for h in b.homes]
    inside = []
    unet.mid_block.register_forward_pre_hook(lambda m, a: inside.append(unet.mid_block.resnets[0].conv1.weight.data_ptr()))
    with torch.no_grad(): pred(unet(x, 10, ctx))
    now = [s[1][s[2]].data_ptr() for b in off.blocks for s in b.slots]
    assert now == homes                                            # outside a forward: the host copies
    mid = next(b for b in off.blocks if b.name == "mid_block")
    assert inside[0] not in [h.data_ptr() for h in mid.homes]      # inside its forward: a device copy
    off.detach()


def test_default_blocks_and_bad_blocks():
    unet = tiny("sdxl")
    names = default_blocks(unet)
    assert names == ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    fine = default_blocks(unet, max_block_bytes=50_000)
    assert len(fine) > len(names) and "up_blocks.0.attentions.0" in fine
    with torch.no_grad():
        x, ctx, add = inputs("sdxl")
        ref = pred(unet(x, 10, ctx, added_cond_kwargs=add))
        off = BlockOffloader(unet, device="cpu", max_block_bytes=50_000).attach()
        assert torch.equal(pred(unet(x, 10, ctx, added_cond_kwargs=add)), ref)
        off.detach()
    with pytest.raises(ValueError, match="not a submodule"):
        BlockOffloader(unet, blocks=["down_blocks.9"], device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            BlockOffloader(unet, device="cuda")


def test_block_offloader_recovers_after_an_exception():
    unet = tiny("sd")
    x, ctx, _ = inputs("sd")
    off = BlockOffloader(unet, device="cpu").attach()
    with pytest.raises(ValueError):
        with torch.no_grad(): pred(unet(x, 10, ctx[:, :, :5]))           # wrong text width: fails inside the forward
    with torch.no_grad(): out = pred(unet(x, 10, ctx))
    off.detach()
    with torch.no_grad(): assert torch.equal(out, pred(unet(x, 10, ctx)))


# --- component manager --------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self, n=64):
        super().__init__(); self.lin = nn.ModuleList([nn.Linear(n, n) for _ in range(3)])
    def forward(self, x):
        for l in self.lin: x = l(x)
        return x


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_component_manager_phases_record_seconds_and_peaks(name):
    prof = resolve_profile(name, "sd21", gpu="cpu")
    comps = {"text_encoder": Tiny(), "unet": Tiny(), "vae": Tiny()}
    ref = {k: m(torch.ones(2, 64)) for k, m in comps.items()}
    mgr = ComponentManager(comps, prof)
    with torch.no_grad():
        for label, c in (("text", "text_encoder"), ("denoise", "unet"), ("decode", "vae")):
            with mgr.phase(label, [c]) as rec:
                assert torch.allclose(comps[c](torch.ones(2, 64)), ref[c])
                if c == "unet": mgr.step_done(); mgr.step_done()
    assert [r.label for r in mgr.records] == ["text", "denoise", "decode"]
    for r in mgr.records:
        assert r.seconds > 0 and r.peak_bytes > 0 and r.kind == "rss" and r.device == "cpu"
    assert mgr.steps == 2 and "| denoise | unet |" in mgr.summary()
    kinds = {n: type(o).__name__ for n, o in mgr.offloaders.items()}
    assert kinds == {"extreme": {"unet": "BlockOffloader", "vae": "ModelOffloader"},
                     "gpu_poor": {"unet": "ModelOffloader", "vae": "ModelOffloader"}}.get(name, {})
    assert mgr.dtype("unet") == torch.float32 and mgr.device("vae") == torch.device("cpu")
    mgr.close()


def test_component_manager_bad_input():
    prof = resolve_profile("cpu_only", "sd21")
    with pytest.raises(ValueError, match="text_encoder_2"):
        ComponentManager({"text_encoder_2": Tiny()}, prof)
    with pytest.raises(TypeError, match="MemoryProfile"):
        ComponentManager({"unet": Tiny()}, "cpu_only")
    mgr = ComponentManager({"unet": Tiny()}, prof)
    with pytest.raises(ValueError, match="'vae'"):
        with mgr.phase("decode", ["vae"]): pass
    with pytest.raises(RuntimeError, match="do not nest"):
        with mgr.phase("a", ["unet"]):
            with mgr.phase("b", ["unet"]): pass


def test_resident_set_evicts_the_coldest_first():
    prof = resolve_profile("gpu_poor", "sd21", gpu="cpu")           # unet and vae: model offload
    comps = {"text_encoder": Tiny(), "unet": Tiny(256), "vae": Tiny(128)}
    unet_b = sum(p.numel() * 4 for p in comps["unet"].parameters())
    vae_b = sum(p.numel() * 4 for p in comps["vae"].parameters())
    budget = (unet_b + vae_b) / 2**30                                # both fit
    mgr = ComponentManager(comps, prof, vram_budget_gb=budget)
    for _ in range(2):
        with mgr.phase("denoise", ["unet"]):
            for _ in range(3): mgr.step_done()
        with mgr.phase("decode", ["vae"]): pass
    assert list(mgr.resident) == ["unet", "vae"]                   # nothing evicted
    tight = ComponentManager(comps, prof, vram_budget_gb=unet_b / 2**30 * 1.01)
    with tight.phase("denoise", ["unet"]):
        for _ in range(3): tight.step_done()
    with tight.phase("decode", ["vae"]): pass
    assert list(tight.resident) == ["vae"]                         # the UNet had to leave for the VAE
    with tight.phase("denoise", ["unet"]): pass
    assert list(tight.resident) == ["unet"]
    eager = ComponentManager(comps, prof)                            # no budget: home after every phase
    with eager.phase("denoise", ["unet"]): pass
    assert not eager.resident


def test_vram_report_is_one_line():
    s = vram_report("x")
    assert s.startswith("[x] ") and "\n" not in s


# --- host copies and the model offloader --------------------------------------------------------------------------
def test_host_copies_pack_into_power_of_two_chunks():
    from diffuse_nb.offload import _host_copies
    ts = [torch.randn(300, 7), torch.arange(5), torch.randn(()).half(), torch.ones(3, dtype=torch.bool), torch.randn(0)]
    homes = _host_copies(ts, pin=False, pack=True, chunk_bytes=4096)
    for t, h in zip(ts, homes):
        assert h.dtype == t.dtype and h.shape == t.shape and torch.equal(h, t)
        assert h.storage_offset() * h.element_size() % 256 == 0
    sizes = {h.untyped_storage().nbytes() for h in homes}
    assert all(s & (s - 1) == 0 or s > 4096 for s in sizes)          # powers of two (or one oversized tensor)
    assert all(h.data_ptr() != t.data_ptr() for t, h in zip(ts, homes) if t.numel())


def test_model_offloader_on_cpu():
    from diffuse_nb.offload import ModelOffloader
    m = Tiny()
    ptrs = [p.data_ptr() for p in m.parameters()]
    ref = m(torch.ones(2, 64))
    off = ModelOffloader(m, device="cpu")
    off.load()
    assert all(p.data_ptr() != q for p, q in zip(m.parameters(), ptrs)) and off.loaded
    assert torch.equal(m(torch.ones(2, 64)), ref)
    off.unload()
    assert [p.data_ptr() for p in m.parameters()] == ptrs and not off.loaded
    off.load(); off.detach()
    assert [p.data_ptr() for p in m.parameters()] == ptrs and off.loads == 2


def test_profile_table_matches_the_profiles():
    t = profile_table("sdxl", gpu="cuda:0")
    lines = t.splitlines()
    assert len(lines) == 2 + len(PROFILE_NAMES) and "text_encoder_2" in lines[0]
    assert "| extreme | cpu, resident | cpu, resident | cuda:0, streamed by block | cuda:0, moved in per phase |" in t
    assert "| cpu_only |" in t and "float32" in lines[-1]


def test_component_manager_model_offload_moves_weights_for_the_phase_only():
    prof = resolve_profile("gpu_poor", "sd21", gpu="cpu")
    unet = Tiny()
    mgr = ComponentManager({"unet": unet}, prof)
    home = [p.data_ptr() for p in unet.parameters()]
    with mgr.phase("denoise", ["unet"]):
        inside = [p.data_ptr() for p in unet.parameters()]
        assert mgr.resident == ("unet",)
    assert all(a != b for a, b in zip(inside, home))                 # a device copy while the phase ran
    assert [p.data_ptr() for p in unet.parameters()] == home and mgr.resident == ()
    mgr.close()


def test_overrides_as_on_a_host_with_two_gpus(monkeypatch):
    import diffuse_nb.memory as M
    real = M.get_device
    monkeypatch.setattr(M, "get_device", lambda d=None, check=True: real(d, check=False))   # pretend they exist
    p = M.resolve_profile("cpu_only", "sd21", devices={"unet": "cuda:0"})
    assert p.devices["unet"] == "cuda:0" and p.dtype == torch.float16 and p.cpu_dtype == torch.float32
    q = M.resolve_profile("balanced", "sdxl", devices=M.auto_devices("sdxl", "balanced", gpus=["cuda:0", "cuda:1"]))
    assert q.devices == {"text_encoder": "cuda:1", "text_encoder_2": "cuda:1", "unet": "cuda:0", "vae": "cuda:1"}
    assert q.dtype == torch.float16 and set(q.offload.values()) == {"none"}
    r = M.resolve_profile("gpu_poor", "sdxl", devices={"vae": "cpu"})
    assert r.offload["vae"] == "none" and r.offload["unet"] == "model"


def test_offload_names_importable_from_memory():
    "The offloading machinery moved to `offload`; its public names still import from `memory`."
    from diffuse_nb import memory, offload
    for name in memory._MOVED_TO_OFFLOAD: assert getattr(memory, name) is getattr(offload, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"): memory.nope
