"Parity, sizes and bad-input checks for `diffuse_nb.ltx2_audio` (LTX-2 audio VAE) and `diffuse_nb.ltx2_vocoder`."
import math

import pytest
import torch

from diffuse_nb.ltx2_audio import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2AudioConfig, LTX2AudioCausalConv2d,
                                   decoded_num_frames, log_mel_spectrogram, mel_filterbank, pack_audio_latents,
                                   unpack_audio_latents)
from diffuse_nb.ltx2_vocoder import (LTX2Vocoder, LTX2VocoderWithBWE, hann_sinc_filter1d, kaiser_sinc_filter1d,
                                     upsampled_length)
from diffuse_nb.testing import max_abs_err, randomize_, save_reference

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLLTX2Audio as RefAudioVAE, LTX2Pipeline  # noqa: E402
from diffusers.pipelines.ltx2 import vocoder as ref_vocoder  # noqa: E402

ATOL = 1e-4
MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": torch.enable_grad}

# --- audio VAE: five tiny configs that together take every branch (see nbs/19_ltx2_audio) -----------------------
VAE = dict(
    A=dict(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, in_channels=2, resolution=32,
           latent_channels=2, mel_bins=8),                                  # diffusers' own fast-test config
    B=dict(base_channels=16, ch_mult=(1, 2, 4), num_res_blocks=1, latent_channels=4, mel_bins=16),
    C=dict(base_channels=32, ch_mult=(1, 1, 2), num_res_blocks=1, latent_channels=2, mel_bins=64,
           norm_type="group", causality_axis="none", resolution=16, attn_resolutions=(16, 4),
           mid_block_add_attention=True),
    D=dict(base_channels=8, ch_mult=(1, 2, 2), num_res_blocks=1, latent_channels=2, mel_bins=16,
           causality_axis="width", double_z=False),
    E=dict(base_channels=8, ch_mult=(1, 2, 2), num_res_blocks=2, latent_channels=2, mel_bins=16,
           causality_axis="width-compatibility", mid_block_add_attention=True))
MEL = dict(A=(2, 2, 9, 8), B=(2, 2, 17, 16), C=(1, 2, 8, 64), D=(2, 2, 9, 16), E=(2, 2, 9, 16))


def ref_vae(name, seed=0):
    ref = randomize_(RefAudioVAE(**VAE[name]).eval(), std=0.1, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ref.latents_mean.copy_(torch.randn(ref.latents_mean.shape, generator=g))
    ref.latents_std.copy_(torch.rand(ref.latents_std.shape, generator=g) + 0.5)
    return ref


_VAES = {}
def vae_pair(name):
    if name not in _VAES:
        ref = ref_vae(name)
        _VAES[name] = AutoencoderKLLTX2Audio.from_pretrained(save_reference(ref)), ref
    return _VAES[name]


@pytest.mark.parametrize("name", list(VAE))
def test_vae_encode_decode_forward_match_diffusers(name):
    ours, ref = vae_pair(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(MEL[name], generator=g)
    z = torch.randn(x.shape[0], ref.config.latent_channels, 5, ours.latent_mel_bins, generator=g)
    with torch.no_grad():
        po, pr = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        assert max_abs_err((po.mean, po.logvar), (pr.mean, pr.logvar)) <= ATOL
        dec, want = ours.decode(z).sample, ref.decode(z).sample
        assert dec.shape == want.shape == (x.shape[0], ref.config.output_channels, 17, ref.config.mel_bins)
        assert max_abs_err(dec, want) <= ATOL and want.abs().max() > 0.1          # numbers, not just shapes
        if name in ("B", "C", "E"):
            assert max_abs_err(ours(x).sample, ref(x).sample) <= ATOL
            gen = lambda: torch.Generator().manual_seed(3)
            assert max_abs_err(ours(x, sample_posterior=True, generator=gen()).sample,
                               ref(x, sample_posterior=True, generator=gen()).sample) <= ATOL


def test_vae_return_types_slicing_and_diffusers_round_trip(tmp_path):
    ours, ref = vae_pair("B")
    x = torch.randn(MEL["B"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ours.decode(ours.encode(x).latent_dist.mode(), return_dict=False)
        assert isinstance(out, tuple) and len(out) == 1
        assert isinstance(ours.encode(x, return_dict=False)[0].mean, torch.Tensor)
        whole = ours(x).sample
        ours.enable_slicing(); sliced = ours(x).sample; ours.disable_slicing()
        assert max_abs_err(whole, sliced) <= 1e-5
        ours.save_pretrained(tmp_path / "ours")
        back = RefAudioVAE.from_pretrained(tmp_path / "ours").eval()
        assert torch.equal(back(x).sample, ref(x).sample)
    with pytest.raises(FileExistsError, match="overwrite=True"): ours.save_pretrained(tmp_path / "ours")


def test_latent_helpers_match_ltx2_pipeline():
    ours, ref = vae_pair("B")
    z = torch.randn(2, 4, 5, 4, generator=torch.Generator().manual_seed(4))
    tokens = pack_audio_latents(z)
    mean, std = ref.latents_mean, ref.latents_std
    assert torch.equal(tokens, LTX2Pipeline._pack_audio_latents(z))
    assert torch.equal(unpack_audio_latents(tokens, 4), LTX2Pipeline._unpack_audio_latents(tokens, 5, num_mel_bins=4))
    assert torch.equal(ours.scale_latents(tokens), LTX2Pipeline._normalize_audio_latents(tokens, mean, std))
    assert torch.equal(ours.unscale_latents(tokens), LTX2Pipeline._denormalize_audio_latents(tokens, mean, std))
    assert max_abs_err(pack_audio_latents(ours.scale_latents(z)), ours.scale_latents(tokens)) <= 1e-6
    assert max_abs_err(ours.unscale_latents(ours.scale_latents(z)), z) <= 1e-5


@pytest.mark.parametrize("load_mode", list(MODES))
def test_vae_loaded_and_run_in_every_mode(load_mode):
    _, ref = vae_pair("B")
    path = save_reference(ref)
    x = torch.randn(MEL["B"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad(): want = ref(x).sample
    with MODES[load_mode](): m = AutoencoderKLLTX2Audio.from_pretrained(path)
    assert not any(p.is_inference() for p in m.parameters())
    for ctx in MODES.values():
        with ctx(): assert max_abs_err(m(x).sample, want) <= ATOL


def test_causal_conv_never_sees_the_future():
    x = torch.randn(1, 2, 20, 16)
    x2 = x.clone(); x2[:, :, 10:] = torch.randn(1, 2, 10, 16)
    conv = LTX2AudioCausalConv2d(2, 4, 3, causality_axis="height")
    assert torch.equal(conv(x)[:, :, :10], conv(x2)[:, :, :10])
    ours, _ = vae_pair("B")                           # the whole encoder is causal in time: latent frame j
    with torch.no_grad(): a, b = ours.encoder(x[:, :, :17]), ours.encoder(x2[:, :, :17])   # sees mel ≤ 4j
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.equal(a, b)


def test_mel_spectrogram_matches_transformers():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
    bank = mel_filter_bank(513, 64, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    assert max_abs_err(mel_filterbank(16000, 1024, 64), torch.from_numpy(bank.T).float()) <= 1e-7
    t = torch.arange(8000, dtype=torch.float64) / 16000
    wave = torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 3000 * t)])[None]   # (1, 2, S)
    mel = log_mel_spectrogram(wave)
    assert mel.shape == (1, 2, 8000 // 160 + 1, 64)
    want = spectrogram(wave[0, 1].numpy(), window_function(1024, "hann"), frame_length=1024, hop_length=160,
                       power=1.0, mel_filters=bank, mel_floor=1e-5, log_mel="log")
    assert max_abs_err(mel[0, 1], torch.from_numpy(want.T)) <= 1e-5


def test_full_size_vae_on_meta_and_its_arithmetic():
    with torch.device("meta"): ours, ref = AutoencoderKLLTX2Audio(), RefAudioVAE()
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(ours) == n(ref) == 53_248_146
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.latents_per_second == 25 and ours.num_latent_frames(121 / 24) == 126
    assert decoded_num_frames(126) == 501 and decoded_num_frames(1) == 1
    assert ours.decode(torch.empty(1, 8, 126, 16, device="meta")).sample.shape == (1, 2, 501, 64)
    assert ours.encode(torch.empty(1, 2, 501, 64, device="meta")).latent_dist.mean.shape == (1, 8, 126, 16)


meta = lambda *shape: torch.empty(*shape, device="meta")


def on_meta(cls, **kw):
    with torch.device("meta"): return cls(**kw)


BIG_VAE = on_meta(AutoencoderKLLTX2Audio)
VAE_BAD = [
    (lambda: BIG_VAE.encode(meta(1, 2, 101, 80)), ValueError, "x has 80 mel bins on its last axis"),
    (lambda: BIG_VAE.encode(meta(1, 1, 101, 64)), ValueError, "x has 1 channels"),
    (lambda: BIG_VAE.encode(meta(2, 101, 64)), ValueError, "x must have shape (B, 2, frames, 64)"),
    (lambda: BIG_VAE.decode(meta(1, 126, 128)), ValueError, "unpack_audio_latents(z, num_mel_bins=16)"),
    (lambda: BIG_VAE.decode(meta(1, 8, 126, 64)), ValueError, "z has 64 mel bins on its last axis"),
    (lambda: BIG_VAE.decode(meta(1, 16, 126, 16)), ValueError, "z has 16 channels"),
    (lambda: BIG_VAE.decode(meta(1, 8, 126, 16, 1)), ValueError, "z must have shape (B, 8, frames, 16)"),
    (lambda: BIG_VAE.decode([0.0]), TypeError, "z must be a torch.Tensor"),
    (lambda: BIG_VAE.scale_latents(meta(1, 126, 64)), ValueError, "have 64 features per frame"),
    (lambda: BIG_VAE.unscale_latents(meta(126, 128)), ValueError, "packed (B, L, C·M) or unpacked"),
    (lambda: pack_audio_latents(meta(1, 126, 128)), ValueError, "latents must be a tensor (B, C, L, M)"),
    (lambda: unpack_audio_latents(meta(1, 126, 128), 5), ValueError, "num_mel_bins=5 does not divide"),
    (lambda: BIG_VAE.num_latent_frames(-1.0), ValueError, "duration_s=-1.0 must be a positive"),
    (lambda: log_mel_spectrogram(torch.zeros(1, 100)), ValueError, "waveform must be a tensor (batch, channels"),
    (lambda: log_mel_spectrogram(torch.zeros(1, 1, 300)), ValueError, "reflection padding needs more than"),
    (lambda: mel_filterbank(16000, f_max=9000), ValueError, "f_max ≤ sample_rate / 2"),
    (lambda: AutoencoderKLLTX2Audio(causality_axis=None), ValueError, "causality_axis=None is not supported"),
    (lambda: AutoencoderKLLTX2Audio(norm_type="batch"), ValueError, "norm_type='batch' is not supported"),
    (lambda: AutoencoderKLLTX2Audio(norm_type="group"), ValueError, "needs causality_axis='none'"),
    (lambda: AutoencoderKLLTX2Audio(norm_type="group", causality_axis="none", base_channels=48),
     ValueError, "must be divisible by 32"),
    (lambda: AutoencoderKLLTX2Audio(ch_mult=()), ValueError, "ch_mult=() must be a non-empty tuple"),
    (lambda: AutoencoderKLLTX2Audio(ch_mult=(1, 0)), ValueError, "ch_mult[1]=0 must be a positive int"),
    (lambda: AutoencoderKLLTX2Audio(latent_channels=0), ValueError, "latent_channels=0 must be a positive int"),
    (lambda: AutoencoderKLLTX2AudioConfig(dropout=1.5), ValueError, "dropout=1.5 must be in [0, 1)"),
]


@pytest.mark.parametrize("call,exc,msg", VAE_BAD, ids=[m for _, _, m in VAE_BAD])
def test_vae_bad_input_is_refused_clearly(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value)


def test_vae_dtype_mismatch_is_refused():
    ours, _ = vae_pair("B")
    with pytest.raises(TypeError, match="z is torch.float64"): ours.decode(torch.zeros(1, 4, 5, 4, dtype=torch.float64))


# --- vocoders ---------------------------------------------------------------------------------------------------
VOC = dict(
    A=dict(in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
           resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
           output_sampling_rate=16000),                                  # diffusers' fast-test vocoder
    B=dict(in_channels=16, hidden_channels=64, upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
           upsample_factors=[5, 2, 2, 2, 2, 2], resnet_kernel_sizes=[3, 7], resnet_dilations=[[1, 3, 5], [1, 3]],
           act_fn="snakebeta", antialias=True, final_act_fn=None, final_bias=False, output_sampling_rate=16000),
    C=dict(in_channels=16, hidden_channels=16, upsample_kernel_sizes=[8, 4], upsample_factors=[4, 2],
           resnet_kernel_sizes=[3, 5], resnet_dilations=[[1, 2], [1]], act_fn="snake", final_act_fn="clamp"),
    D=dict(in_channels=8, hidden_channels=16, out_channels=1, upsample_kernel_sizes=[5, 3], upsample_factors=[2, 2],
           resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]], act_fn="snakebeta", final_act_fn=None))
VOC_MEL = dict(A=(2, 2, 7, 8), B=(2, 2, 5, 8), C=(1, 2, 9, 8), D=(2, 1, 6, 8))
VOC_STD = dict(A=0.2, B=0.14, C=0.2, D=0.2)
BWE = dict(in_channels=16, hidden_channels=32, upsample_kernel_sizes=[5, 4], upsample_factors=[2, 2],
           resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]], bwe_in_channels=16, bwe_hidden_channels=32,
           bwe_upsample_kernel_sizes=[7, 8], bwe_upsample_factors=[3, 4], bwe_resnet_kernel_sizes=[3, 5],
           bwe_resnet_dilations=[[1, 3], [1]], filter_length=16, hop_length=4, window_length=16, num_mel_channels=8,
           input_sampling_rate=8000, output_sampling_rate=24000)
LTX2_VOCODER = dict(in_channels=128, hidden_channels=1024, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4],
                    upsample_factors=[6, 5, 2, 2, 2], resnet_kernel_sizes=[3, 7, 11],
                    resnet_dilations=[[1, 3, 5]] * 3, act_fn="leaky_relu", leaky_relu_negative_slope=0.1,
                    antialias=False, final_act_fn="tanh", final_bias=True, output_sampling_rate=24000)

_VOCS = {}
def voc_pair(name):
    if name not in _VOCS:
        ref = randomize_(ref_vocoder.LTX2Vocoder(**VOC[name]).eval(), std=VOC_STD[name], seed=0)
        _VOCS[name] = LTX2Vocoder.from_pretrained(save_reference(ref)), ref
    return _VOCS[name]


def bwe_pair():
    if "bwe" not in _VOCS:
        ref = randomize_(ref_vocoder.LTX2VocoderWithBWE(**BWE).eval(), std=0.07, seed=0)
        g = torch.Generator().manual_seed(0)
        stft = ref.mel_stft.stft_fn
        stft.forward_basis.copy_(torch.randn(stft.forward_basis.shape, generator=g))
        stft.inverse_basis.copy_(torch.randn(stft.inverse_basis.shape, generator=g))
        ref.mel_stft.mel_basis.copy_(torch.rand(ref.mel_stft.mel_basis.shape, generator=g))
        _VOCS["bwe"] = LTX2VocoderWithBWE.from_pretrained(save_reference(ref)), ref
    return _VOCS["bwe"]


@pytest.mark.parametrize("name", list(VOC))
def test_vocoder_matches_diffusers(name):
    ours, ref = voc_pair(name)
    x = torch.randn(VOC_MEL[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)
        assert max_abs_err(ours(x), want) <= ATOL and want.std() > 0.05
        assert want.shape[-1] == ours.num_samples(x.shape[2])
        xt = x.transpose(2, 3)
        assert max_abs_err(ours(xt, time_last=True), ref(xt, time_last=True)) <= ATOL


def test_bwe_vocoder_matches_diffusers(tmp_path):
    ours, ref = bwe_pair()
    x = torch.randn(2, 2, 7, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)
        assert max_abs_err(ours(x), want) <= ATOL and 0.05 < want.std() and (want.abs() < 1).float().mean() > 0.9
        assert want.shape == (2, 2, ours.num_samples(7)) == (2, 2, 3 * ours.vocoder.num_samples(7))
        w = ours.vocoder(x)[:, 0]
        assert max_abs_err(ours.mel_stft(w), ref.mel_stft(w)) <= ATOL
        ours.save_pretrained(tmp_path / "ours")
        back = ref_vocoder.LTX2VocoderWithBWE.from_pretrained(tmp_path / "ours").eval()
        assert torch.equal(back(x), want)


def test_filters_equal_diffusers():
    for args in [(0.25, 0.3, 12), (0.125, 0.15, 24), (1 / 6, 0.2, 11), (0.0, 0.3, 12)]:
        assert torch.equal(kaiser_sinc_filter1d(*args), ref_vocoder.kaiser_sinc_filter1d(*args))
    up = ref_vocoder.UpSample1d(ratio=3, window_type="hann", persistent=False)
    assert torch.equal(hann_sinc_filter1d(3).view(1, 1, -1), up.filter)
    fresh, fresh_ref = LTX2Vocoder(**VOC["B"]), ref_vocoder.LTX2Vocoder(**VOC["B"])
    a, b = fresh.state_dict(), fresh_ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith("filter"))


@pytest.mark.parametrize("load_mode", list(MODES))
def test_vocoder_loaded_and_run_in_every_mode(load_mode):
    _, ref = bwe_pair()
    path = save_reference(ref)
    x = torch.randn(1, 2, 5, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(): want = ref(x)
    with MODES[load_mode](): m = LTX2VocoderWithBWE.from_pretrained(path)
    assert not any(p.is_inference() for p in m.parameters())
    for ctx in MODES.values():
        with ctx(): assert max_abs_err(m(x), want) <= ATOL


n_params = lambda m: sum(p.numel() for p in m.parameters())
shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_full_size_vocoders_on_meta():
    v20, v23 = on_meta(LTX2Vocoder, **LTX2_VOCODER), on_meta(LTX2VocoderWithBWE)
    r20 = on_meta(ref_vocoder.LTX2Vocoder, **LTX2_VOCODER)
    assert n_params(v20) == n_params(r20) == 55_592_802 and shapes(v20) == shapes(r20)
    assert n_params(v23) == 128_537_448 and n_params(v23.bwe_generator) == 13_462_416   # diffusers': see below
    mel = torch.empty(1, 2, 501, 64, device="meta")
    assert v20(mel).shape == (1, 2, 501 * 240) and v23(mel).shape == (1, 2, 501 * 160 * 3)
    assert v20.num_samples(501) == 120_240 and v23.num_samples(501) == 240_480
    assert upsampled_length(10, (15,), (5,)) == 50 and upsampled_length(10, (5,), (2,)) == 21


@pytest.mark.slow
def test_full_size_bwe_vocoder_has_diffusers_names_and_shapes():
    v23, r23 = on_meta(LTX2VocoderWithBWE), on_meta(ref_vocoder.LTX2VocoderWithBWE)
    assert n_params(v23) == n_params(r23) == 128_537_448 and shapes(v23) == shapes(r23)


BIG_VOC, TOY = on_meta(LTX2Vocoder), LTX2Vocoder(**VOC["A"])
VOC_BAD = [
    (lambda: BIG_VOC(meta(1, 2, 501, 80)), ValueError, "2 channels × 80 mel bins = 160 features"),
    (lambda: BIG_VOC(meta(1, 2, 64, 501), time_last=False), ValueError, "2 channels × 501 mel bins"),
    (lambda: BIG_VOC(meta(1, 128, 501)), ValueError, "must be a log-mel spectrogram (B, channels, frames, mel bins)"),
    (lambda: BIG_VOC([0.0]), TypeError, "hidden_states must be a torch.Tensor"),
    (lambda: TOY(torch.zeros(1, 2, 5, 8, dtype=torch.float64)), TypeError, "hidden_states is torch.float64"),
    (lambda: BIG_VOC.num_samples(0), ValueError, "num_frames=0 must be a positive int"),
    (lambda: LTX2Vocoder(act_fn="relu"), ValueError, "act_fn='relu' is not supported"),
    (lambda: LTX2Vocoder(final_act_fn="sigmoid"), ValueError, "final_act_fn='sigmoid' is not supported"),
    (lambda: LTX2Vocoder(upsample_factors=(6, 5)), ValueError, "must have the same length"),
    (lambda: LTX2Vocoder(resnet_dilations=((1, 3, 5),)), ValueError, "one list of dilations per"),
    (lambda: LTX2Vocoder(upsample_kernel_sizes=(4, 15, 8, 4, 4)), ValueError, "upsample_kernel_sizes[0]=4 is smaller"),
    (lambda: LTX2Vocoder(hidden_channels=16), ValueError, "would reach 0 channels"),
    (lambda: LTX2Vocoder(antialias=True), ValueError, "act_fn='leaky_relu' with antialias=True is not supported"),
    (lambda: LTX2Vocoder(in_channels=0), ValueError, "in_channels=0 must be a positive int"),
    (lambda: LTX2VocoderWithBWE(output_sampling_rate=44100), ValueError, "must be a whole multiple"),
    (lambda: LTX2VocoderWithBWE(num_mel_channels=80), ValueError, "bwe_in_channels=128 must be"),
    (lambda: LTX2VocoderWithBWE(bwe_upsample_factors=(6, 5, 2, 2, 1)), ValueError, "multiply to hop_length × ratio"),
    (lambda: LTX2VocoderWithBWE(bwe_upsample_kernel_sizes=(12, 10, 4, 4, 4)), ValueError, "kernel − stride"),
    (lambda: LTX2VocoderWithBWE(bwe_act_fn="gelu"), ValueError, "BWE generator (the bwe_* fields): act_fn='gelu'"),
    (lambda: LTX2VocoderWithBWE(final_act_fn="x"), ValueError, "first-stage vocoder: final_act_fn='x'"),
    (lambda: on_meta(LTX2VocoderWithBWE)(meta(1, 2, 501, 32)), ValueError, "2 channels × 32 mel bins = 64"),
]


@pytest.mark.parametrize("call,exc,msg", VOC_BAD, ids=[m for _, _, m in VOC_BAD])
def test_vocoder_bad_input_is_refused_clearly(call, exc, msg):
    with pytest.raises(exc) as e: call()
    assert msg in str(e.value)
