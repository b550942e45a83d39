"""Parity sweeps of diffuse_nb.schedulers (DDIM, Euler) and flow matching against diffusers over whole trajectories,
plus bad-input and loading checks (all fast, CPU)."""
import itertools, json, warnings

import numpy as np
import pytest
import torch

from diffuse_nb.schedulers import (DDIMScheduler, EulerDiscreteScheduler, karras_sigmas, rescale_zero_terminal_snr,
                                   make_betas, spaced_timesteps)
from diffuse_nb.samplers import FlowMatchEulerDiscreteScheduler, calculate_shift, compare_schedulers

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler as RefDDIM, EulerDiscreteScheduler as RefEuler, FlowMatchEulerDiscreteScheduler as RefFlow

ATOL = 1e-6


COLS = ("timesteps", "sigmas", "init_noise_sigma", "model_input", "prev_sample", "pred_original_sample")


def check(ours, ref, n, label, **kw):
    errs = compare_schedulers(ours, ref, n, **kw)
    print(f"{label}: " + ", ".join(f"{k} {errs[k]:.1e}" for k in COLS))
    assert errs["timesteps_equal"], (label, errs)                  # integer and float timesteps: bit-equal
    for k in COLS: assert errs[k] <= ATOL, (label, k, errs)
    assert errs["steps"] == len(ref.timesteps) or kw.get("n_steps"), errs   # the whole trajectory was compared
    return errs


# ---------------------------------------------------------------- DDIM: 27 combos (+ stochastic variants)
DDIM_CASES = []
for i, (beta, spacing, pred) in enumerate(itertools.product(("linear", "scaled_linear", "squaredcos_cap_v2"),
                                                            ("leading", "trailing", "linspace"),
                                                            ("epsilon", "v_prediction", "sample"))):
    kw = dict(beta_schedule=beta, timestep_spacing=spacing, prediction_type=pred, steps_offset=i % 2,
              set_alpha_to_one=bool(i % 3), rescale_betas_zero_snr=(pred == "v_prediction" and i % 2 == 0),
              clip_sample=bool(i % 4 == 0), clip_sample_range=1.0 + 0.5 * (i % 3), thresholding=(i % 5 == 0),
              dynamic_thresholding_ratio=0.9 + 0.01 * (i % 9), sample_max_value=1.0 + i % 3)
    if beta != "linear": kw.update(beta_start=0.00085, beta_end=0.012)
    eta, noise = [(0.0, None), (1.0, "variance_noise"), (0.5, "generator")][i % 3]
    DDIM_CASES.append((kw, (10, 25, 50, 13)[i % 4], eta, noise, i % 2 == 1))


@pytest.mark.parametrize("kw,n,eta,noise,clipped", DDIM_CASES, ids=[f"ddim{i}" for i in range(len(DDIM_CASES))])
def test_ddim_parity(kw, n, eta, noise, clipped):
    check(DDIMScheduler(**kw), RefDDIM(**kw), n, f"DDIM {kw} n={n} eta={eta}",
          step_kwargs={"eta": eta, "use_clipped_model_output": clipped}, noise=noise)


# ---------------------------------------------------------------- Euler: 36 combos + extras
EULER_CASES = []
for i, (beta, spacing, pred, sig) in enumerate(itertools.product(("linear", "scaled_linear", "squaredcos_cap_v2"),
                                                                 ("leading", "trailing", "linspace"),
                                                                 ("epsilon", "v_prediction"), ("plain", "karras"))):
    kw = dict(beta_schedule=beta, timestep_spacing=spacing, prediction_type=pred, steps_offset=i % 2,
              use_karras_sigmas=(sig == "karras"), final_sigmas_type=("zero", "sigma_min")[i % 2 == 0 and i % 3 == 0],
              rescale_betas_zero_snr=(pred == "v_prediction" and i % 3 == 1))
    if beta != "linear": kw.update(beta_start=0.00085, beta_end=0.012)
    EULER_CASES.append((kw, (10, 30, 7, 50)[i % 4]))
EULER_CASES += [
    (dict(use_exponential_sigmas=True, beta_schedule="scaled_linear"), 15),
    (dict(use_karras_sigmas=True, sigma_min=0.05, sigma_max=10.0), 12),
    (dict(prediction_type="v_prediction", timestep_type="continuous"), 10),
    (dict(prediction_type="sample", timestep_spacing="trailing"), 10),
    (dict(interpolation_type="log_linear", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 10),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=500, timestep_spacing="leading"), 20),
]


@pytest.mark.parametrize("kw,n", EULER_CASES, ids=[f"euler{i}" for i in range(len(EULER_CASES))])
def test_euler_parity(kw, n):
    check(EulerDiscreteScheduler(**kw), RefEuler(**kw), n, f"Euler {kw} n={n}")


def test_euler_churn_parity():
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    check(EulerDiscreteScheduler(**kw), RefEuler(**kw), 10, "Euler churn",
          step_kwargs={"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 10.0}, noise="generator")


@pytest.mark.parametrize("which", ["timesteps", "sigmas"])
def test_euler_custom_schedule(which):
    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    arg = {"timesteps": [999, 850, 700.5, 500, 300, 120, 20], "sigmas": [14.0, 8.0, 4.0, 2.0, 1.0, 0.3, 0.0]}[which]
    check(EulerDiscreteScheduler(**kw), RefEuler(**kw), None, f"Euler custom {which}", set_kwargs={which: arg})


# ---------------------------------------------------------------- Flow matching: 24 combos + extras
FLOW_CASES = []
for i, (shift_mode, terminal, sig, n) in enumerate(itertools.product(
        ("shift1", "shift3", "dyn_exp", "dyn_lin"), (None, 0.1), ("plain", "karras", "exponential"), (10,))):
    kw = dict(shift={"shift1": 1.0, "shift3": 3.0}.get(shift_mode, 1.0), use_dynamic_shifting=shift_mode.startswith("dyn"),
              time_shift_type="linear" if shift_mode == "dyn_lin" else "exponential", shift_terminal=terminal,
              use_karras_sigmas=sig == "karras", use_exponential_sigmas=sig == "exponential", invert_sigmas=(i % 7 == 3))
    mu = {"dyn_exp": calculate_shift(1024 + 97 * i), "dyn_lin": 1.0 + 0.2 * i}.get(shift_mode)
    FLOW_CASES.append((kw, (10, 28, 50, 8)[i % 4], mu))


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


def test_flow_output_fields_match_diffusers():
    s, r = FlowMatchEulerDiscreteScheduler(shift=3.0), RefFlow(shift=3.0)
    s.set_timesteps(5); r.set_timesteps(5)
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    out, ref = s.step(v, s.timesteps[0], x), r.step(v, r.timesteps[0], x)
    assert list(out) == list(ref) == ["prev_sample"] and torch.equal(out[0], ref[0])
    assert torch.equal(out.prev_sample, x + (s.sigmas[1] - s.sigmas[0]) * v)


def test_parity_check_is_not_vacuous():
    "A one-option difference must show up as a large error."
    e = compare_schedulers(DDIMScheduler(), RefDDIM(prediction_type="v_prediction"), 10)
    assert e["prev_sample"] > 0.1 and e["pred_original_sample"] > 0.1
    e = compare_schedulers(EulerDiscreteScheduler(), RefEuler(timestep_spacing="trailing"), 10)
    assert not e["timesteps_equal"] and e["sigmas"] > 0.1
    e = compare_schedulers(FlowMatchEulerDiscreteScheduler(shift=2.0), RefFlow(shift=2.01), 10)
    assert e["sigmas"] > 1e-4 and e["prev_sample"] > 1e-4


# ---------------------------------------------------------------- shared math, forward process
def test_module_functions():
    for b in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        assert torch.equal(make_betas(b), RefDDIM(beta_schedule=b).betas)
        assert torch.equal(rescale_zero_terminal_snr(make_betas(b)), RefDDIM(beta_schedule=b, rescale_betas_zero_snr=True).betas)
    ks = karras_sigmas(0.03, 14.6, 10)
    assert ks[0] == pytest.approx(14.6) and ks[-1] == pytest.approx(0.03) and (np.diff(ks) < 0).all()
    assert list(spaced_timesteps("leading", 1000, 4, 1)) == [751, 501, 251, 1]
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as ref_shift
    for args in [(256,), (4096,), (1000, 256, 4096, 0.5, 1.15), (6144, 1024, 4096, 0.95, 2.05)]:
        assert calculate_shift(*args) == ref_shift(*args)


def test_add_noise_velocity_scale_noise():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for kw in [dict(), dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True)]:
        d, r = DDIMScheduler(**kw), RefDDIM(**kw)
        t = torch.tensor([999, 500, 0])
        assert torch.equal(d.add_noise(x0, noise, t), r.add_noise(x0, noise, t))
        assert torch.equal(d.get_velocity(x0, noise, t), r.get_velocity(x0, noise, t))
        e, re = EulerDiscreteScheduler(**kw), RefEuler(**kw)
        e.set_timesteps(10); re.set_timesteps(10)
        te = e.timesteps[[0, 5, 9]]
        assert torch.equal(e.add_noise(x0, noise, te), re.add_noise(x0, noise, te))
        assert torch.equal(e.get_velocity(x0, noise, te), re.get_velocity(x0, noise, te))
    f, rf = FlowMatchEulerDiscreteScheduler(shift=3.0), RefFlow(shift=3.0)
    f.set_timesteps(10); rf.set_timesteps(10)
    tf = f.timesteps[[0, 3, 9]]
    assert torch.equal(f.scale_noise(x0, tf, noise), rf.scale_noise(x0, tf, noise))


def test_properties():
    e = EulerDiscreteScheduler(timestep_spacing="leading", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    r = RefEuler(timestep_spacing="leading", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    e.set_timesteps(10); r.set_timesteps(10)
    assert torch.equal(e.init_noise_sigma, r.init_noise_sigma)
    for ours in (DDIMScheduler(), e, FlowMatchEulerDiscreteScheduler()):
        assert ours.order == 1 and len(ours) == 1000
    assert DDIMScheduler().init_noise_sigma == 1.0 and FlowMatchEulerDiscreteScheduler().init_noise_sigma == 1.0


# ---------------------------------------------------------------- configs and loading
@pytest.mark.parametrize("ours_cls,ref_cls,kw", [
    (DDIMScheduler, RefDDIM, dict(beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1, set_alpha_to_one=False)),
    (EulerDiscreteScheduler, RefEuler, dict(timestep_spacing="leading", use_karras_sigmas=True, final_sigmas_type="sigma_min")),
    (FlowMatchEulerDiscreteScheduler, RefFlow, LTX2)])
def test_from_pretrained_roundtrip(tmp_path, ours_cls, ref_cls, kw):
    ref_cls(**kw).save_pretrained(tmp_path / "pipe" / "scheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # a diffusers-written config gives no warning
        a = ours_cls.from_pretrained(tmp_path / "pipe")
        b = ours_cls.from_pretrained(tmp_path / "pipe" / "scheduler", subfolder=None)
        c = ours_cls.from_pretrained(tmp_path / "pipe" / "scheduler")      # the scheduler folder itself also works
    assert a.config == b.config == c.config == ours_cls(**kw).config
    raw = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert ours_cls.from_config(raw).config == a.config


def test_real_configs_cross_load_quietly():
    sd21 = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DDIMScheduler.from_config(sd21); EulerDiscreteScheduler.from_config(sd21)   # swapping schedulers, as pipelines do
    with pytest.warns(UserWarning, match="beta_shedule"):
        DDIMScheduler.from_config({"beta_shedule": "linear"})


def test_trained_betas():
    betas = np.linspace(1e-4, 0.03, 100).tolist()
    check(DDIMScheduler(trained_betas=betas, num_train_timesteps=100), RefDDIM(trained_betas=betas, num_train_timesteps=100), 10,
          "DDIM trained_betas")
    check(EulerDiscreteScheduler.from_config({"trained_betas": betas, "num_train_timesteps": 100}),
          RefEuler(trained_betas=betas, num_train_timesteps=100), 10, "Euler trained_betas")


# ---------------------------------------------------------------- bad input
BAD = [
    (lambda: DDIMScheduler(beta_schedule="cosine"), "beta_schedule='cosine'"),
    (lambda: DDIMScheduler.from_config({"beta_schedule": "sqrt"}), "beta_schedule='sqrt'"),
    (lambda: DDIMScheduler(timestep_spacing="uniform"), "timestep_spacing='uniform'"),
    (lambda: DDIMScheduler(prediction_type="flow"), "prediction_type='flow'"),
    (lambda: EulerDiscreteScheduler(prediction_type="eps"), "prediction_type='eps'"),
    (lambda: EulerDiscreteScheduler.from_config({"timestep_spacing": "even"}), "timestep_spacing='even'"),
    (lambda: EulerDiscreteScheduler(interpolation_type="cubic"), "interpolation_type='cubic'"),
    (lambda: EulerDiscreteScheduler(final_sigmas_type="one"), "final_sigmas_type='one'"),
    (lambda: EulerDiscreteScheduler(timestep_type="int"), "timestep_type='int'"),
    (lambda: EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True), "only one of"),
    (lambda: EulerDiscreteScheduler(use_beta_sigmas=True, use_exponential_sigmas=True), "only one of"),
    (lambda: FlowMatchEulerDiscreteScheduler(time_shift_type="cubic"), "time_shift_type='cubic'"),
    (lambda: FlowMatchEulerDiscreteScheduler(shift=0.0), "shift=0.0"),
    (lambda: FlowMatchEulerDiscreteScheduler(shift_terminal=1.5), "shift_terminal=1.5"),
    (lambda: DDIMScheduler(num_train_timesteps=0), "num_train_timesteps=0"),
    (lambda: DDIMScheduler().step(torch.zeros(1), 10, torch.zeros(1)), "before set_timesteps"),
    (lambda: DDIMScheduler().set_timesteps(1001), "num_inference_steps=1001"),
    (lambda: DDIMScheduler().set_timesteps(0), "num_inference_steps=0"),
    (lambda: EulerDiscreteScheduler().set_timesteps(1001), "num_inference_steps=1001"),
    (lambda: EulerDiscreteScheduler().set_timesteps(-3), "num_inference_steps=-3"),
    (lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(0), "num_inference_steps=0"),
    (lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(2000), "num_inference_steps=2000"),
    (lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).set_timesteps(10), "mu=None"),
    (lambda: EulerDiscreteScheduler().set_timesteps(10, sigmas=[1.0, 0.0]), "exactly one"),
    (lambda: EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500]), "pass sigmas"),
    (lambda: DDIMScheduler().set_timesteps(timesteps=[999, 500]), "no custom timesteps"),
    (lambda: DDIMScheduler(dynamic_thresholding_ratio=1.5), "dynamic_thresholding_ratio=1.5"),
    (lambda: FlowMatchEulerDiscreteScheduler().set_timesteps(3, sigmas=[1.0, 0.5]), "entries"),
]


@pytest.mark.parametrize("fn,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input(fn, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        fn()


def test_integer_timestep_rejected_for_sigma_schedulers():
    for s in (EulerDiscreteScheduler(), FlowMatchEulerDiscreteScheduler()):
        s.set_timesteps(4)
        with pytest.raises(ValueError, match="integer"):
            s.step(torch.zeros(1), 0, torch.zeros(1))


def test_eta_with_both_noise_sources():
    s = DDIMScheduler(); s.set_timesteps(4)
    with pytest.raises(ValueError, match="not both"):
        s.step(torch.zeros(1), s.timesteps[0], torch.zeros(1), eta=1.0, generator=torch.Generator(), variance_noise=torch.zeros(1))


def test_unknown_kwarg_is_typeerror():
    with pytest.raises(TypeError, match="beta_shedule"):
        DDIMScheduler(beta_shedule="linear")
