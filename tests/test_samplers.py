"""Parity sweeps of diffuse_nb.samplers (PNDM, Euler ancestral, DPM-Solver++, flow matching) against diffusers over
whole trajectories (timesteps, sigmas and every step's outputs, ancestral/SDE noise from seeded generators), the
name registry, and bad input. All fast, CPU."""
import inspect, itertools, json

import numpy as np
import pytest
import torch

from diffuse_nb.schedulers import DDIMScheduler, EulerDiscreteScheduler
from diffuse_nb.samplers import (SCHEDULER_NAMES, SCHEDULER_VARIANTS, DPMSolverMultistepScheduler,
                                 EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler,
                                 calculate_shift, compare_schedulers, load_scheduler, scheduler_class,
                                 scheduler_from_name)

diffusers = pytest.importorskip("diffusers")
from diffusers import (DPMSolverMultistepScheduler as RefDPM, EulerAncestralDiscreteScheduler as RefEulerA,
                       FlowMatchEulerDiscreteScheduler as RefFlow, PNDMScheduler as RefPNDM)

ATOL = 1e-6
COLS = ("timesteps", "sigmas", "init_noise_sigma", "model_input", "prev_sample", "pred_original_sample")
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
SPACINGS = ("leading", "trailing", "linspace")


def check(ours, ref, n, label, **kw):
    errs = compare_schedulers(ours, ref, n, **kw)
    assert errs["timesteps_equal"], (label, errs)
    for k in COLS: assert errs[k] <= ATOL, (label, k, errs)
    assert errs["steps"] == len(ref.timesteps) > 0, (label, errs)          # the whole trajectory was compared
    return errs


# ---------------------------------------------------------------- PNDM: PLMS and PRK, spacings, predictions, steps
PNDM_CASES = []
for i, (spacing, pred, skip, betas) in enumerate(itertools.product(SPACINGS, ("epsilon", "v_prediction"),
                                                                   (True, False), ("linear", "sd", "cos"))):
    kw = dict(timestep_spacing=spacing, prediction_type=pred, skip_prk_steps=skip, set_alpha_to_one=bool(i % 3 == 1),
              steps_offset=i % 2)
    kw.update({"linear": {}, "sd": SD, "cos": dict(beta_schedule="squaredcos_cap_v2")}[betas])
    steps = (1, 2, 5, 10, 13, 25, 50) if skip else (4, 10, 50)
    PNDM_CASES.append((kw, steps[i % len(steps)]))


@pytest.mark.parametrize("kw,n", PNDM_CASES, ids=[f"pndm{i}" for i in range(len(PNDM_CASES))])
def test_pndm_parity(kw, n):
    check(PNDMScheduler(**kw), RefPNDM(**kw), n, f"PNDM {kw} n={n}")


def test_pndm_sd15_config_and_steps_1_to_50():
    sd15 = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "trained_betas": None, "clip_sample": False}
    for n in range(1, 51, 7):
        check(PNDMScheduler.from_config(sd15), RefPNDM.from_config(sd15), n, f"PNDM SD1.5 n={n}")


# ---------------------------------------------------------------- Euler ancestral: noise from generators
EULER_A_CASES = []
for i, (spacing, pred, betas) in enumerate(itertools.product(SPACINGS, ("epsilon", "v_prediction"),
                                                             ("linear", "sd", "cos"))):
    kw = dict(timestep_spacing=spacing, prediction_type=pred, steps_offset=i % 2,
              rescale_betas_zero_snr=(pred == "v_prediction" and i % 3 == 0))
    kw.update({"linear": {}, "sd": SD, "cos": dict(beta_schedule="squaredcos_cap_v2")}[betas])
    EULER_A_CASES.append((kw, (1, 7, 20, 50)[i % 4]))


@pytest.mark.parametrize("kw,n", EULER_A_CASES, ids=[f"euler_a{i}" for i in range(len(EULER_A_CASES))])
def test_euler_ancestral_parity(kw, n):
    check(EulerAncestralDiscreteScheduler(**kw), RefEulerA(**kw), n, f"Euler a {kw} n={n}", noise="generator")


def test_euler_ancestral_seeds():
    "Same seeds (also one generator per row, as pipelines pass them) -> the same samples as diffusers; others differ."
    def run(sched, seeds, n=10):
        sched.set_timesteps(n); x = torch.ones(len(seeds), 4, 8, 8) * sched.init_noise_sigma
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for t in sched.timesteps: x = sched.step(0.1 * sched.scale_model_input(x, t), t, x, generator=gens).prev_sample
        return x
    a, b = run(EulerAncestralDiscreteScheduler(**SD), [3, 4]), run(RefEulerA(**SD), [3, 4])
    assert torch.equal(a, b)
    assert torch.equal(run(EulerAncestralDiscreteScheduler(**SD), [3])[0], a[0])      # row 0 depends on its seed only
    assert (run(EulerAncestralDiscreteScheduler(**SD), [5, 4])[0] - a[0]).abs().max() > 0.1


# ---------------------------------------------------------------- DPM-Solver++: the configurations SD/SDXL users run
DPM_CASES = []
for i, (spacing, pred, karras, final) in enumerate(itertools.product(
        SPACINGS, ("epsilon", "v_prediction", "sample"), (False, True), ("zero", "sigma_min"))):
    kw = dict(timestep_spacing=spacing, prediction_type=pred, use_karras_sigmas=karras, final_sigmas_type=final,
              solver_order=(2, 2, 1, 3)[i % 4], lower_order_final=bool(i % 5), steps_offset=i % 2, **SD)
    DPM_CASES.append((kw, (1, 2, 3, 7, 14, 15, 25, 50)[i % 8]))
DPM_EXTRA = [
    (dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, **SD), 20),
    (dict(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun", **SD), 12),
    (dict(algorithm_type="sde-dpmsolver++", solver_order=1), 10),
    (dict(solver_type="heun", use_exponential_sigmas=True), 15),
    (dict(use_beta_sigmas=True, **SD), 15),
    (dict(use_lu_lambdas=True, **SD), 12),
    (dict(use_lu_lambdas=True, beta_schedule="squaredcos_cap_v2"), 12),
    (dict(euler_at_final=True, lower_order_final=False, final_sigmas_type="sigma_min"), 20),
    (dict(thresholding=True, prediction_type="sample", sample_max_value=1.5, dynamic_thresholding_ratio=0.9), 10),
    (dict(lambda_min_clipped=-5.1, beta_schedule="squaredcos_cap_v2"), 25),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", final_sigmas_type="sigma_min", **SD), 10),
    (dict(use_karras_sigmas=True, beta_schedule="linear", solver_order=3, solver_type="heun"), 8),
    (dict(num_train_timesteps=500, timestep_spacing="leading", steps_offset=1, **SD), 30),
]


@pytest.mark.parametrize("kw,n", DPM_CASES + DPM_EXTRA, ids=[f"dpm{i}" for i in range(len(DPM_CASES + DPM_EXTRA))])
def test_dpm_parity(kw, n):
    check(DPMSolverMultistepScheduler(**kw), RefDPM(**kw), n, f"DPM {kw} n={n}", noise="generator")


def test_dpm_variance_noise_and_custom_timesteps():
    kw = dict(algorithm_type="sde-dpmsolver++", **SD)
    check(DPMSolverMultistepScheduler(**kw), RefDPM(**kw), 10, "DPM SDE variance_noise", noise="variance_noise")
    check(DPMSolverMultistepScheduler(**SD), RefDPM(**SD), None, "DPM custom timesteps",
          set_kwargs={"timesteps": [999, 800, 600, 400, 200, 50]})


def test_dpm_learned_variance_output():
    "`variance_type='learned_range'`: the model's extra channels are dropped before x̂0, as in diffusers."
    o, r = DPMSolverMultistepScheduler(variance_type="learned_range"), RefDPM(variance_type="learned_range")
    o.set_timesteps(5); r.set_timesteps(5)
    x = torch.randn(2, 3, 8, 8)
    for to, tr in zip(o.timesteps, r.timesteps):
        out = torch.randn(2, 6, 8, 8)
        xo, xr = o.step(out, to, x).prev_sample, r.step(out, tr, x).prev_sample
        assert torch.equal(xo, xr); x = xo


def test_dpm_swapped_solver_names():
    "DEIS's and UniPC's solver names map to DPM-Solver++'s, as diffusers maps them when a config is swapped in."
    unipc = {"_class_name": "UniPCMultistepScheduler", "solver_type": "bh2", **SD}
    o, r = DPMSolverMultistepScheduler.from_config(unipc), RefDPM.from_config(unipc)
    assert o.config.solver_type == r.config.solver_type == "midpoint"
    check(o, r, 10, "DPM from a UniPC config")
    deis = {"_class_name": "DEISMultistepScheduler", "solver_type": "logrho", "algorithm_type": "deis", **SD}
    for cls in (DPMSolverMultistepScheduler, RefDPM):            # diffusers refuses final σ 0 for a DEIS config
        with pytest.raises(ValueError, match="final_sigmas_type"): cls.from_config(deis)
    o, r = (cls.from_config(deis, final_sigmas_type="sigma_min") for cls in (DPMSolverMultistepScheduler, RefDPM))
    assert o.config.algorithm_type == r.config.algorithm_type == "dpmsolver++"
    check(o, r, 10, "DPM from a DEIS config")


def test_add_noise_parity():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for ours, ref in [(PNDMScheduler(**SD), RefPNDM(**SD)), (EulerAncestralDiscreteScheduler(**SD), RefEulerA(**SD)),
                      (DPMSolverMultistepScheduler(use_karras_sigmas=True, **SD),
                       RefDPM(use_karras_sigmas=True, **SD))]:
        ours.set_timesteps(10); ref.set_timesteps(10)
        t = ours.timesteps[[0, 4, 9]]
        assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)), type(ours).__name__


# ---------------------------------------------------------------- flow matching
FLOW_CASES = []
for i, (shift_mode, terminal, sig) in enumerate(itertools.product(
        ("shift1", "shift3", "dyn_exp", "dyn_lin"), (None, 0.1), ("plain", "karras", "exponential", "beta"))):
    kw = dict(shift={"shift1": 1.0, "shift3": 3.0}.get(shift_mode, 1.0), use_dynamic_shifting=shift_mode.startswith("dyn"),
              time_shift_type="linear" if shift_mode == "dyn_lin" else "exponential", shift_terminal=terminal,
              use_karras_sigmas=sig == "karras", use_exponential_sigmas=sig == "exponential",
              use_beta_sigmas=sig == "beta", invert_sigmas=(i % 7 == 3))
    mu = {"dyn_exp": calculate_shift(1024 + 97 * i), "dyn_lin": 1.0 + 0.2 * i}.get(shift_mode)
    n = 1 if i % 5 == 4 and terminal is None else (10, 28, 50, 8, 3)[i % 5]   # shift_terminal needs n >= 2
    FLOW_CASES.append((kw, n, mu))


@pytest.mark.parametrize("kw,n,mu", FLOW_CASES, ids=[f"flow{i}" for i in range(len(FLOW_CASES))])
def test_flow_parity(kw, n, mu):
    check(FlowMatchEulerDiscreteScheduler(**kw), RefFlow(**kw), n, f"Flow {kw} n={n} mu={mu}",
          set_kwargs={"mu": mu} if mu is not None else {})


LTX2 = {"base_image_seq_len": 1024, "base_shift": 0.95, "max_image_seq_len": 4096, "max_shift": 2.05, "shift": 1.0,
        "shift_terminal": 0.1, "time_shift_type": "exponential", "use_dynamic_shifting": True}


@pytest.mark.parametrize("n,seq_len", [(8, 1152), (20, 4096), (40, 6144)])
def test_flow_ltx2_custom_sigmas(n, seq_len):
    sig, mu = np.linspace(1.0, 1 / n, n), calculate_shift(seq_len, 1024, 4096, 0.95, 2.05)
    check(FlowMatchEulerDiscreteScheduler.from_config(LTX2), RefFlow.from_config(LTX2), None, f"Flow LTX-2 n={n}",
          set_kwargs={"sigmas": sig, "mu": mu})


def test_flow_custom_timesteps_and_stochastic():
    check(FlowMatchEulerDiscreteScheduler(shift=2.0), RefFlow(shift=2.0), None, "Flow custom timesteps+sigmas",
          set_kwargs={"timesteps": [1000.0, 800.0, 500.0, 200.0], "sigmas": [1.0, 0.8, 0.5, 0.2]})
    kw = dict(stochastic_sampling=True, shift=3.0)
    check(FlowMatchEulerDiscreteScheduler(**kw), RefFlow(**kw), 10, "Flow stochastic", noise="generator")


def test_flow_scale_noise():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    f, rf = FlowMatchEulerDiscreteScheduler(shift=3.0), RefFlow(shift=3.0)
    f.set_timesteps(10); rf.set_timesteps(10)
    t = f.timesteps[[0, 3, 9]]
    assert torch.equal(f.scale_noise(x0, t, noise), rf.scale_noise(x0, t, noise))


def test_parity_check_is_not_vacuous():
    "A one-option difference must show up as a large error."
    e = compare_schedulers(PNDMScheduler(skip_prk_steps=True), RefPNDM(skip_prk_steps=True, set_alpha_to_one=True), 10)
    assert e["prev_sample"] > 0.01
    e = compare_schedulers(DPMSolverMultistepScheduler(), RefDPM(solver_order=1), 10)
    assert e["prev_sample"] > 1e-3
    e = compare_schedulers(EulerAncestralDiscreteScheduler(), RefEulerA(), 10)   # no shared generator: noise differs
    assert e["prev_sample"] > 0.1
    e = compare_schedulers(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"),
                           RefDPM(algorithm_type="sde-dpmsolver++"), 10)
    assert e["prev_sample"] > 0.1


# ---------------------------------------------------------------- registry
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "skip_prk_steps": True, "steps_offset": 1,
        "set_alpha_to_one": False, "clip_sample": False, "num_train_timesteps": 1000, **SD}


def test_names():
    for needed in ("ddim", "euler", "euler_karras", "euler_a", "pndm", "dpm++2m", "dpm++2m_karras", "flow_euler"):
        assert needed in SCHEDULER_NAMES
    for name in SCHEDULER_NAMES[:-1]:
        s = scheduler_from_name(name, SD15)
        cls_name, options = SCHEDULER_VARIANTS[name]
        assert type(s).__name__ == cls_name
        for k, v in options.items():
            if k in s.config.__dataclass_fields__: assert s.config[k] == v, (name, k)
        assert s.config.beta_schedule == "scaled_linear" and s.config.beta_start == 0.00085    # the model's schedule kept
    assert scheduler_from_name("euler_karras", SD15).config.use_karras_sigmas
    assert not scheduler_from_name("euler", EulerDiscreteScheduler(use_karras_sigmas=True)).config.use_karras_sigmas
    assert scheduler_from_name("dpm++2m_sde_karras", SD15).config.algorithm_type == "sde-dpmsolver++"
    assert scheduler_from_name("pndm", {**SD15, "_class_name": "DDIMScheduler", "skip_prk_steps": False}).config.skip_prk_steps
    assert isinstance(scheduler_from_name("flow_euler", LTX2), FlowMatchEulerDiscreteScheduler)


def test_name_matches_diffusers_swap():
    "scheduler_from_name(name, cfg) == diffusers' Cls.from_config(cfg, **options), step for step."
    refs = {"DDIMScheduler": diffusers.DDIMScheduler, "PNDMScheduler": RefPNDM,
            "EulerDiscreteScheduler": diffusers.EulerDiscreteScheduler, "EulerAncestralDiscreteScheduler": RefEulerA,
            "DPMSolverMultistepScheduler": RefDPM}
    for name in SCHEDULER_NAMES[:-1]:
        cls_name, options = SCHEDULER_VARIANTS[name]
        ref_options = {k: v for k, v in options.items() if k in refs[cls_name]._get_init_keys(refs[cls_name])}
        ours = scheduler_from_name(name, SD15)
        noise = "generator" if "generator" in inspect.signature(ours.step).parameters else None
        check(ours, refs[cls_name].from_config(SD15, **ref_options), 12, name, noise=noise)


def test_scheduler_class_and_load(tmp_path):
    for cls in (DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, EulerAncestralDiscreteScheduler,
                DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler):
        assert scheduler_class(cls.__name__) is cls
        ref = getattr(diffusers, cls.__name__)()
        ref.save_pretrained(tmp_path / cls.__name__ / "scheduler")
        loaded = load_scheduler(tmp_path / cls.__name__)
        assert type(loaded) is cls and loaded.config == cls().config
        assert type(load_scheduler(tmp_path / cls.__name__ / "scheduler", subfolder=None)) is cls


BAD = [
    (lambda: scheduler_from_name("k_lms", SD15), "name='k_lms'"),
    (lambda: scheduler_from_name("k_lms", SD15), "'dpm++2m_karras'"),
    (lambda: scheduler_from_name("ddim", LTX2 | {"_class_name": "FlowMatchEulerDiscreteScheduler"}), "flow_euler"),
    (lambda: scheduler_from_name("flow_euler", SD15), "allowed for this model"),
    (lambda: scheduler_from_name("euler", FlowMatchEulerDiscreteScheduler()), "allowed for this model"),
    (lambda: scheduler_class("UniPCMultistepScheduler"), "class_name='UniPCMultistepScheduler'"),
    (lambda: PNDMScheduler(prediction_type="sample"), "prediction_type='sample'"),
    (lambda: PNDMScheduler().set_timesteps(3), "needs >= 4"),
    (lambda: PNDMScheduler().set_timesteps(10, timesteps=[999, 500]), "no custom timesteps"),
    (lambda: EulerAncestralDiscreteScheduler(prediction_type="sample"), "prediction_type='sample'"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver"), "algorithm_type='dpmsolver'"),
    (lambda: DPMSolverMultistepScheduler(solver_order=4), "solver_order=4"),
    (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True), "use_flow_sigmas=True"),
    (lambda: DPMSolverMultistepScheduler(use_lu_lambdas=True, use_karras_sigmas=True), "use_lu_lambdas"),
    (lambda: DPMSolverMultistepScheduler(final_sigmas_type="one"), "final_sigmas_type='one'"),
    (lambda: DPMSolverMultistepScheduler().set_timesteps(10, sigmas=[1.0, 0.0]), "no custom sigmas"),
    (lambda: DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 10]), "use_karras"),
    (lambda: DPMSolverMultistepScheduler().set_timesteps(0), "num_inference_steps=0"),
    (lambda: DPMSolverMultistepScheduler().set_timesteps(), "exactly one"),
    (lambda: FlowMatchEulerDiscreteScheduler(time_shift_type="cubic"), "time_shift_type='cubic'"),
    (lambda: FlowMatchEulerDiscreteScheduler(shift=0.0), "shift=0.0"),
    (lambda: FlowMatchEulerDiscreteScheduler(shift_terminal=1.5), "shift_terminal=1.5"),
    (lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(0), "num_inference_steps=0"),
    (lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(10), "mu=None"),
    (lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(3, sigmas=[1.0, 0.5]), "entries"),
]


@pytest.mark.parametrize("fn,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input(fn, msg):
    with pytest.raises(ValueError) as e:
        fn()
    assert msg in str(e.value), (msg, str(e.value))


def test_load_scheduler_errors(tmp_path):
    d = tmp_path / "pipe" / "scheduler"; d.mkdir(parents=True)
    (d / "scheduler_config.json").write_text(json.dumps({"_class_name": "UniPCMultistepScheduler", **SD}))
    with pytest.raises(ValueError, match="scheduler_from_name"):
        load_scheduler(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError):
        load_scheduler(tmp_path / "nothing_here")
