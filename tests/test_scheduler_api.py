"""Code written for diffusers' schedulers gives the same results with ours: configs as mappings, config round trips
through files in both directions, swaps by config between every pair of compatible classes (ours and diffusers',
either way), default behaviours (step before set_timesteps, tuple-indexable outputs, begin index), beta sigmas."""
import copy, inspect, itertools, json, pickle, sys, warnings

import pytest
import torch

from diffuse_nb.schedulers import DDIMScheduler, EulerDiscreteScheduler, SchedulerOutput
from diffuse_nb.samplers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                                 FlowMatchEulerDiscreteScheduler, PNDMScheduler, compare_schedulers)

diffusers = pytest.importorskip("diffusers")

OURS = [DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler,
        DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler]
BETA = OURS[:-1]                                                   # the swappable β-schedule family
REF = {c: getattr(diffusers, c.__name__) for c in OURS}
COLS = ("timesteps", "sigmas", "init_noise_sigma", "model_input", "prev_sample", "pred_original_sample")

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CONFIGS = {   # real scheduler_config.json files of SD 1.5, SD 2.1, SDXL, plus a default-only one
    "sd15": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "clip_sample": False,
             "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None, **SD},
    "sd21": {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "clip_sample": False,
             "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, **SD},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "clip_sample": False,
             "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False, **SD},
    "defaults": {},
}


def strip(config) -> dict:
    "A config as a plain dict, without the order-free `_use_default_values` list (compared as a set)."
    return {k: v for k, v in config.items() if k != "_use_default_values"}


def same_config(ours, ref):
    assert strip(ours) == strip(ref), (strip(ours), strip(ref))
    assert set(ours.get("_use_default_values", ())) == set(ref.get("_use_default_values", ()))


def gen(sched) -> dict:
    "A freshly seeded generator for schedulers whose step draws noise (so ours and diffusers' draw alike)."
    return {"generator": torch.Generator().manual_seed(0)} if "generator" in inspect.signature(sched.step).parameters \
        else {}


def same_run(ours, ref, n=10, label=""):
    noise = "generator" if "generator" in inspect.signature(ref.step).parameters else None
    errs = compare_schedulers(ours, ref, n, noise=noise)
    assert errs["timesteps_equal"] and all(errs[k] <= 1e-6 for k in COLS), (label, errs)
    assert errs["steps"] == len(ref.timesteps), (label, errs)


# ---------------------------------------------------------------- config behaves like diffusers' FrozenDict
@pytest.mark.parametrize("cls", OURS, ids=lambda c: c.__name__)
def test_config_is_a_mapping_like_diffusers(cls):
    ours, ref = cls(num_train_timesteps=500), REF[cls](num_train_timesteps=500)
    same_config(ours.config, ref.config)
    assert isinstance(ours.config, dict) and set(dict(ours.config)) == set(dict(ref.config))
    for k in strip(ref.config):
        assert ours.config[k] == ref.config[k] and getattr(ours.config, k) == getattr(ref.config, k), k
    assert ours.config.get("nope", 3) == 3 and "num_train_timesteps" in ours.config and len(ours) == len(ref) == 500
    assert {**ours.config}["num_train_timesteps"] == 500 and json.loads(json.dumps(strip(ours.config)))
    with pytest.raises(TypeError, match="read-only"): ours.config["num_train_timesteps"] = 3
    with pytest.raises(TypeError, match="read-only"): ours.config.update(num_train_timesteps=3)
    assert copy.deepcopy(ours.config) == ours.config and pickle.loads(pickle.dumps(ours.config)) == ours.config
    assert copy.deepcopy(ours.config)["_use_default_values"] == ours.config["_use_default_values"]
    assert ours.order == ref.order


def test_kept_keys_read_as_attributes():
    "Keys of other schedulers stay in the config (and read as attributes), as in diffusers."
    ours = DDIMScheduler.from_config(CONFIGS["sd21"])
    ref = diffusers.DDIMScheduler.from_config(CONFIGS["sd21"])
    assert ours.config.skip_prk_steps is ref.config.skip_prk_steps is True
    assert ours.config["_class_name"] == ref.config["_class_name"] == "DDIMScheduler"
    with pytest.raises(AttributeError): ours.config.not_a_key


# ---------------------------------------------------------------- files, both directions
@pytest.mark.parametrize("cls", OURS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["sd15", "sdxl", "defaults"])
def test_save_config_roundtrip(tmp_path, cls, name):
    config = CONFIGS[name] if cls in BETA else {"shift": 3.0, "use_dynamic_shifting": False}
    ours, ref = cls.from_config(config), REF[cls].from_config(config)
    path = ours.save_config(tmp_path / "ours" / "scheduler")
    raw = json.loads(path.read_text())
    assert raw["_class_name"] == cls.__name__ and "_diffusers_version" in raw and "_use_default_values" not in raw
    ref.save_config(tmp_path / "ref" / "scheduler")
    ref_raw = json.loads((tmp_path / "ref" / "scheduler" / "scheduler_config.json").read_text())
    assert set(raw) == set(ref_raw) and {k: v for k, v in raw.items() if k != "_diffusers_version"} == \
        {k: v for k, v in ref_raw.items() if k != "_diffusers_version"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)         # a diffusers-written config loads quietly
        theirs = REF[cls].from_pretrained(tmp_path / "ours", subfolder="scheduler")     # ours -> diffusers (file)
        theirs2 = REF[cls].from_config(REF[cls].load_config(tmp_path / "ours" / "scheduler"))
        back = cls.from_pretrained(tmp_path / "ref", subfolder="scheduler")             # diffusers -> ours (file)
        back2 = cls.from_pretrained(tmp_path / "ref" / "scheduler")
    same_config(back.config, REF[cls].from_pretrained(tmp_path / "ref", subfolder="scheduler").config)
    assert back.config == back2.config == cls.from_config(raw).config
    same_run(back, theirs, 8, f"{cls.__name__} {name}"); same_run(cls.from_config(raw), theirs2, 8)


def test_save_never_overwrites(tmp_path):
    s = EulerDiscreteScheduler()
    s.save_pretrained(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite=True"): s.save_config(tmp_path)
    EulerDiscreteScheduler(timestep_spacing="trailing").save_config(tmp_path, overwrite=True)
    assert EulerDiscreteScheduler.from_pretrained(tmp_path).config.timestep_spacing == "trailing"
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"): s.save_config(tmp_path / "f")


# ---------------------------------------------------------------- swaps by config between every compatible pair
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("a,b", list(itertools.product(BETA, BETA)), ids=lambda c: c.__name__[:-9])
def test_swap_every_pair(a, b, name):
    "B.from_config(A.from_config(cfg).config): ours == diffusers', and each side accepts the other's config."
    ref = REF[b].from_config(REF[a].from_config(CONFIGS[name]).config)
    ours = b.from_config(a.from_config(CONFIGS[name]).config)
    ours_from_ref = b.from_config(REF[a].from_config(CONFIGS[name]).config)     # diffusers config -> our class
    ref_from_ours = REF[b].from_config(a.from_config(CONFIGS[name]).config)     # our config -> diffusers class
    for o in (ours, ours_from_ref): same_config(o.config, ref.config)
    same_config(ref_from_ours.config, ref.config)
    n = 10
    same_run(ours, ref, n, f"{a.__name__}->{b.__name__} {name}")
    same_run(ours_from_ref, REF[b].from_config(ref.config), n)
    same_run(b.from_config(ref_from_ours.config), ref_from_ours, n)


def test_swap_chain_keeps_keys():
    "DDIM -> Euler -> PNDM: PNDM's skip_prk_steps rides along, as in diffusers."
    ours = PNDMScheduler.from_config(EulerDiscreteScheduler.from_config(DDIMScheduler.from_config(CONFIGS["sd21"]).config).config)
    ref = diffusers.PNDMScheduler.from_config(diffusers.EulerDiscreteScheduler.from_config(
        diffusers.DDIMScheduler.from_config(CONFIGS["sd21"]).config).config)
    same_config(ours.config, ref.config)
    assert ours.config.skip_prk_steps is True and ours.config.prediction_type == "v_prediction"
    same_run(ours, ref)


def test_flow_swaps_and_compatibles():
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    same_config(FlowMatchEulerDiscreteScheduler.from_config(flow.config).config,
                diffusers.FlowMatchEulerDiscreteScheduler.from_config(flow.config).config)
    assert flow.compatibles == [FlowMatchEulerDiscreteScheduler]
    ref_names = {c.__name__ for c in diffusers.DDIMScheduler().compatibles}
    for cls in BETA:
        names = {c.__name__ for c in cls().compatibles}
        assert names == {c.__name__ for c in BETA} and names <= ref_names


def test_from_config_overrides_and_unused_kwargs():
    s = EulerDiscreteScheduler.from_config(CONFIGS["sdxl"], use_karras_sigmas=True, timestep_spacing="trailing")
    r = diffusers.EulerDiscreteScheduler.from_config(CONFIGS["sdxl"], use_karras_sigmas=True, timestep_spacing="trailing")
    same_config(s.config, r.config); same_run(s, r)
    s, unused = DDIMScheduler.from_config(CONFIGS["sdxl"], return_unused_kwargs=True, solver_order=3)
    assert isinstance(s, DDIMScheduler) and unused["solver_order"] == 3 and unused["interpolation_type"] == "linear"
    assert DDIMScheduler.from_config(CONFIGS["sdxl"], solver_order=3).config.beta_schedule == "scaled_linear"
    with pytest.raises(TypeError, match="prediction_typ"):       # a typo in an override is an error here
        DDIMScheduler.from_config({}, prediction_typ="v_prediction")
    with pytest.raises(TypeError, match="from_pretrained"):
        DDIMScheduler.from_config("runwayml/stable-diffusion-v1-5")


# ---------------------------------------------------------------- default behaviours
@pytest.mark.parametrize("cls", OURS, ids=lambda c: c.__name__)
def test_step_before_set_timesteps(cls):
    "Raise the same kind of error as diffusers, or run on the training table exactly as it does."
    ours, ref = cls(), REF[cls]()
    x, v = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = ref.timesteps[0] if ref.timesteps is not None else torch.tensor(999)
    try: expected = ref.step(v, t, x, **gen(ref))
    except Exception as e:
        with pytest.raises(type(e)): ours.step(v, t, x, **gen(ours))
        return
    got = ours.step(v, ours.timesteps[0], x, **gen(ours))
    assert torch.equal(ours.timesteps, ref.timesteps) and torch.equal(got.prev_sample, expected.prev_sample)


def test_step_before_set_timesteps_kinds():
    "What diffusers does (checked above) spelled out."
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"): DDIMScheduler().step(x, 999, x)
    with pytest.raises(ValueError, match="set_timesteps"): DPMSolverMultistepScheduler().step(x, 999, x)
    with pytest.raises(TypeError, match="set_timesteps"): PNDMScheduler().step(x, 999, x)
    for cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler):
        s = cls(); assert s.step(x, s.timesteps[0], x).prev_sample.shape == x.shape


@pytest.mark.parametrize("cls", OURS, ids=lambda c: c.__name__)
def test_outputs_index_like_tuples(cls):
    ours, ref = cls(), REF[cls]()
    ours.set_timesteps(5); ref.set_timesteps(5)
    x, v = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    out, rout = ours.step(v, ours.timesteps[0], x, **gen(ours)), ref.step(v, ref.timesteps[0], x, **gen(ref))
    assert isinstance(out, SchedulerOutput) and list(out) == list(rout) and len(out) == len(rout)
    assert out[0] is out.prev_sample and torch.equal(out["prev_sample"], rout["prev_sample"])
    assert len(out.to_tuple()) == len(rout.to_tuple())
    for a, b in zip(out.to_tuple(), rout.to_tuple()): assert torch.equal(a, b)
    ours.set_timesteps(5); ref.set_timesteps(5)
    tup = ours.step(v, ours.timesteps[0], x, return_dict=False, **gen(ours))
    rtup = ref.step(v, ref.timesteps[0], x, return_dict=False, **gen(ref))
    assert isinstance(tup, tuple) and len(tup) == len(rtup) and torch.equal(tup[0], rtup[0])
    with pytest.raises(KeyError): out["nope"]


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler,
                                 FlowMatchEulerDiscreteScheduler], ids=lambda c: c.__name__)
def test_begin_index_img2img(cls):
    "Pipelines start mid-schedule with set_begin_index(k): step_index and every step follow diffusers."
    ours, ref = cls(), REF[cls]()
    for s in (ours, ref): s.set_timesteps(10); s.set_begin_index(4)
    x = torch.randn(1, 4, 4, 4); xo = xr = x; g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    kw = lambda g: {"generator": g} if "generator" in inspect.signature(ref.step).parameters else {}
    noise = torch.randn(1, 4, 4, 4)
    if hasattr(ref, "add_noise"):
        assert torch.equal(ours.add_noise(x, noise, ours.timesteps[4:5]), ref.add_noise(x, noise, ref.timesteps[4:5]))
    for to, tr in zip(ours.timesteps[4:], ref.timesteps[4:]):
        assert ours.step_index == ref.step_index and ours.begin_index == ref.begin_index == 4
        xo = ours.step(0.1 * ours.scale_model_input(xo, to), to, xo, **kw(g1)).prev_sample
        xr = ref.step(0.1 * (ref.scale_model_input(xr, tr) if hasattr(ref, "scale_model_input") else xr), tr, xr,
                      **kw(g2)).prev_sample
        assert torch.equal(xo, xr)


def test_integer_timestep_rejected_like_diffusers():
    for cls in (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler):
        ours, ref = cls(), REF[cls]()
        ours.set_timesteps(4); ref.set_timesteps(4)
        with pytest.raises(ValueError): ref.step(torch.zeros(1), 0, torch.zeros(1))
        with pytest.raises(ValueError, match="integer"): ours.step(torch.zeros(1), 0, torch.zeros(1))


# ---------------------------------------------------------------- beta sigmas: with scipy, and a clear error without
@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler],
                         ids=lambda c: c.__name__)
def test_beta_sigmas(cls, monkeypatch):
    pytest.importorskip("scipy")
    same_run(cls(use_beta_sigmas=True), REF[cls](use_beta_sigmas=True), 12)
    monkeypatch.setitem(sys.modules, "scipy", None); monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(ImportError, match="scipy"): cls(use_beta_sigmas=True)
    cls()                                                          # without the option, scipy is not needed
