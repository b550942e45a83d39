"Round trips and bad-input checks for `diffuse_nb.video_files` (mp4, webm, gif, frames; WAV; H.264 still)."
import numpy as np
import pytest
import torch
from PIL import Image

from diffuse_nb.video_files import (VIDEO_FORMATS, as_audio, as_frames, h264_roundtrip, read_video,
                                    read_video_info, read_wav, save_frames, save_video, video_format, write_wav)


def clip(num_frames=9, height=32, width=48, fps=10, rate=16000):
    "Frames of a moving square and a stereo tone lasting exactly as long."
    frames = np.full((num_frames, height, width, 3), 30, np.uint8)
    for i in range(num_frames): frames[i, 8:24, 2 * i:2 * i + 16] = (250, 200, 40)
    t = np.arange(round(num_frames / fps * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    return frames, np.stack([tone, 0.5 * tone]).astype(np.float32)


FRAMES, AUDIO = clip()


@pytest.mark.parametrize("name,fmt,codec,audio_codec", [("a.mp4", "mp4", "h264", "aac"),
                                                        ("a.webm", "webm", "vp9", "opus"),
                                                        ("a.gif", "gif", "gif", None),
                                                        ("a_frames", "frames", None, None)])
def test_every_format_reads_back(tmp_path, name, fmt, codec, audio_codec):
    p = save_video(FRAMES, tmp_path / name, fps=10, audio=AUDIO, sample_rate=16000)
    v = read_video(p)
    assert v["format"] == fmt and len(v["frames"]) == 9 and v["frames"].shape[1:] == (32, 48, 3)
    assert v["fps"] == 10                               # GIF: delays in 1/100 s, 10 fps exact
    assert np.abs(v["frames"].astype(float) - FRAMES).mean() < 8               # lossy codecs: a few levels
    sound, rate = (v["audio"], v["sample_rate"]) if fmt != "gif" else read_wav(p.with_suffix(".wav"))
    assert sound.shape[0] == 2
    assert abs(sound.shape[1] / rate - 9 / 10) < 0.03                          # the clip's duration
    if codec is not None:
        info = read_video_info(p)
        assert (info["codec"], info["num_frames"], info["width"], info["height"]) == (codec, 9, 48, 32)
        assert info["audio"] == (audio_codec is not None) and info["audio_codec"] == audio_codec
        if audio_codec: assert abs(info["audio_seconds"] - 9 / 10) < 0.03


def test_mp4_audio_matches_what_was_written(tmp_path):
    v = read_video(save_video(FRAMES, tmp_path / "a.mp4", fps=10, audio=AUDIO, sample_rate=16000))
    assert v["audio_codec"] == "aac" and v["sample_rate"] == 16000
    n = min(v["audio"].shape[1], AUDIO.shape[1])
    mid = slice(n // 4, 3 * n // 4)                                 # away from the encoder's edge priming
    corr = np.corrcoef(v["audio"][0, mid], AUDIO[0, mid])[0, 1]
    assert corr > 0.9, corr


def test_frames_folder_is_lossless_with_fps_and_wav(tmp_path):
    p = save_video(FRAMES, tmp_path / "f", fps=12.5, audio=AUDIO, sample_rate=16000, metadata={"seed": 3})
    v = read_video(p)
    np.testing.assert_array_equal(v["frames"], FRAMES)
    assert v["fps"] == 12.5 and v["metadata"] == {"seed": 3}
    assert np.abs(v["audio"] - AUDIO).max() < 1 / 32767 + 1e-6


def test_video_without_sound_and_metadata(tmp_path):
    info = read_video_info(save_video(FRAMES, tmp_path / "m.mp4", fps=24, metadata={"prompt": "a"}))
    assert not info["audio"] and info["audio_seconds"] is None
    assert info["metadata"] == {"prompt": "a"} and info["fps"] == 24 and info["num_frames"] == 9


@pytest.mark.parametrize("name", ["long.mp4", "long.webm"])
def test_long_metadata_with_special_characters_comes_back_whole(tmp_path, name):
    meta = {"prompt": "a red; ball = #1 \\ x é", "sigmas": [i / 300 for i in range(300)], "none": None}
    assert read_video_info(save_video(FRAMES, tmp_path / name, fps=10, metadata=meta))["metadata"] == meta


def test_odd_sizes_float_frames_and_torch_inputs(tmp_path):
    frames = torch.rand(5, 33, 47, 3)
    p = save_video(frames, tmp_path / "odd.mp4", fps=10, audio=torch.zeros(1, 2, 8000), sample_rate=16000)
    info = read_video_info(p)
    assert info["num_frames"] == 5 and (info["width"], info["height"]) in ((47, 33), (48, 34))


@pytest.mark.parametrize("name", ["a.mp4", "a.webm", "a.gif", "a_frames"])
def test_nothing_is_overwritten_without_overwrite(tmp_path, name):
    p = save_video(FRAMES, tmp_path / name, fps=10)
    before = sorted(q.stat().st_mtime_ns for q in tmp_path.rglob("*"))
    with pytest.raises(FileExistsError, match="overwrite=True"): save_video(FRAMES[:3], p, fps=10)
    assert sorted(q.stat().st_mtime_ns for q in tmp_path.rglob("*")) == before
    save_video(FRAMES[:3], p, fps=8, overwrite=True)
    assert len(read_video(p)["frames"]) == 3                                     # replaced, no stale frames


def test_gif_wav_beside_it_is_not_overwritten(tmp_path):
    write_wav(tmp_path / "a.wav", AUDIO, 16000)
    with pytest.raises(FileExistsError, match="a.wav"):
        save_video(FRAMES, tmp_path / "a.gif", fps=10, audio=AUDIO, sample_rate=16000)
    assert not (tmp_path / "a.gif").exists()


def test_save_frames_refuses_a_folder_with_frames(tmp_path):
    save_frames(FRAMES, tmp_path / "x")
    with pytest.raises(FileExistsError, match="already holds 9 frames"): save_frames(FRAMES, tmp_path / "x")
    assert len(save_frames(FRAMES[:2], tmp_path / "x", overwrite=True)) == 2
    assert len(list((tmp_path / "x").glob("frame_*.png"))) == 2


BAD = [(dict(path="x.avi"), ValueError, "cannot tell the format"),
       (dict(format="mkv"), ValueError, "format='mkv'"),
       (dict(fps=0), ValueError, "fps=0"),
       (dict(fps=-2.0), ValueError, "fps=-2.0"),
       (dict(fps=True), ValueError, "fps=True"),
       (dict(quality=70), ValueError, "quality=70"),
       (dict(path="x.gif", quality=20), ValueError, "takes none"),
       (dict(audio=AUDIO), ValueError, "without sample_rate"),
       (dict(audio=AUDIO, sample_rate=16000.5), ValueError, "sample_rate=16000.5"),
       (dict(audio=AUDIO[:, :, None], sample_rate=16000), ValueError, "1 to 8 channels"),
       (dict(audio=AUDIO * np.nan, sample_rate=16000), ValueError, "NaN"),
       (dict(frames=FRAMES[..., 0]), ValueError, "(num_frames, height, width, 3)"),
       (dict(frames=FRAMES / 100.0), ValueError, "must lie in [0, 1]"),
       (dict(frames=FRAMES.astype(np.int32)), ValueError, "dtype int32"),
       (dict(frames="frames"), TypeError, "frames must be")]


@pytest.mark.parametrize("kw,exc,msg", BAD)
def test_bad_input_is_refused_before_writing(tmp_path, kw, exc, msg):
    kw = dict(kw)
    args = dict(frames=kw.pop("frames", FRAMES), path=tmp_path / kw.pop("path", "x.mp4"), fps=kw.pop("fps", 10))
    with pytest.raises(exc) as e: save_video(**args, **kw)
    assert msg in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_format_from_suffix_and_helpers():
    assert [video_format(p) for p in ("a.mp4", "b.WEBM", "c.gif", "d")] == ["mp4", "webm", "gif", "frames"]
    assert video_format("a.mp4", "gif") == "gif" and set(VIDEO_FORMATS) == {"mp4", "webm", "gif", "frames"}
    assert as_frames(np.ones((1, 2, 3, 4, 3))).shape == (2, 3, 4, 3)                     # batch of one
    assert as_frames([Image.new("RGB", (4, 3))] * 2).shape == (2, 3, 4, 3)
    assert as_audio(np.ones(10) * 2).max() == 1.0 and as_audio(np.ones((1, 2, 5))).shape == (2, 5)


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"): read_video(tmp_path / "none.mp4")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="video.json"): read_video(tmp_path / "d")


def test_h264_roundtrip_of_a_still():
    img = Image.fromarray(FRAMES[4])
    assert h264_roundtrip(img, 0) is img
    out = h264_roundtrip(Image.fromarray(FRAMES[4, :31, :47]), 33)
    assert out.size == (46, 30)                                                     # even sides for 4:2:0
    err = np.abs(np.asarray(h264_roundtrip(img, 33), float) - FRAMES[4]).mean()
    assert 0 < err < 10
    with pytest.raises(ValueError, match="image_crf=52"): h264_roundtrip(img, 52)
