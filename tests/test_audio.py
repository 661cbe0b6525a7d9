"""Mechanism tests for `attnwav2lip.audio`: the mel chain against independent derivations, index math, file reading, bad input."""
import subprocess

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
from imageio_ffmpeg import get_ffmpeg_exe

from attnwav2lip.audio import (AudioConfig, check_waveform, frame_mel_windows, hann_window, inference_mel_chunks,
                               load_wav, mel_basis, mel_index, melspectrogram, stft_magnitude, sync_mel_window)

CFG = AudioConfig()


def speechlike(n=16000 + 137, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = sum(np.sin(2 * np.pi * h * 130 * t + rng.uniform(0, 6)) / h for h in range(1, 30))
    return (0.2 * x * (1 + np.sin(2 * np.pi * 3 * t)) / 2 + rng.normal(0, 0.01, n)).astype(np.float32)


def librosa_reference(wav, pad_mode):
    "The official chain written with librosa/scipy calls (wav2lip.md §b), as a second route."
    y = scipy.signal.lfilter([1, -0.97], [1], wav.astype(np.float64))
    D = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, window='hann', center=True, pad_mode=pad_mode)
    M = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ np.abs(D)
    S = 20 * np.log10(np.maximum(1e-5, M)) - 20
    return np.clip(8 * (S + 100) / 100 - 4, -4, 4)


# ---------------------------------------------------------------- the mel chain

@pytest.mark.parametrize("n", [3000, 3199, 3200, 16000, 16001, 32000])
def test_silence_is_exactly_minus_four_and_frame_count(n):
    mel = melspectrogram(np.zeros(n, np.float32))
    assert mel.dtype == np.float32 and mel.shape == (80, 1 + n // 200)
    assert (mel == -4).all()


@pytest.mark.parametrize("b,A", [(50, 0.3), (13, 0.05), (180, 0.8), (300, 0.001)])
def test_pure_tone_interior_frames_match_hand_derivation(b, A):
    n = 12000
    x = A * np.cos(2 * np.pi * b * np.arange(n) / 800 + 1.1)
    B = mel_basis().astype(np.float64)
    A1 = A * abs(1 - 0.97 * np.exp(-2j * np.pi * b / 800))       # pre-emphasis gain at the tone's frequency
    M = A1 * (100 * B[:, b - 1] + 200 * B[:, b] + 100 * B[:, b + 1])  # periodic Hann: A'Σw/2 = 200A', neighbours 100A'
    expected = np.clip(0.08 * (20 * np.log10(np.maximum(1e-5, M)) - 20) + 4, -4, 4)
    mel = melspectrogram(x)
    interior = mel[:, 3:(n - 400) // 200 + 1]                     # frames fully inside the steady-state signal
    assert interior.shape[1] > 40
    np.testing.assert_allclose(interior, np.broadcast_to(expected[:, None], interior.shape), atol=2e-5)


def test_stft_magnitude_of_bin_centred_tone():
    x = 0.5 * np.sin(2 * np.pi * 40 * np.arange(8000) / 800)
    S = stft_magnitude(x)[:, 2:-2]
    np.testing.assert_allclose(S[40], 100.0, atol=1e-9)
    np.testing.assert_allclose(S[[39, 41]], 50.0, atol=1e-9)
    assert np.delete(S, [39, 40, 41], axis=0).max() < 1e-9


def test_stft_blocks_do_not_change_the_result():
    y = speechlike(9000).astype(np.float64)
    np.testing.assert_array_equal(stft_magnitude(y, block=7), stft_magnitude(y))


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_matches_librosa_route(pad_mode):
    wav = speechlike()
    ours = melspectrogram(wav, AudioConfig(pad_mode=pad_mode))
    ref = librosa_reference(wav, pad_mode)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_edge_frames_differ_from_zero_padding_only_at_the_edges():
    wav = speechlike()
    d = np.abs(melspectrogram(wav) - melspectrogram(wav, AudioConfig(pad_mode='constant'))).max(0)
    assert (d[[0, 1, -2, -1]] > 1e-3).all()
    assert d[2:-2].max() == 0


def test_mel_basis_matches_independent_slaney_filterbank():
    hz_to_mel = lambda f: np.where(f < 1000, 3 * f / 200, 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4))
    mel_to_hz = lambda m: np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))
    edges = mel_to_hz(np.linspace(hz_to_mel(55.0), hz_to_mel(7600.0), 82))
    f = np.arange(401) * 20.0
    lower = (f[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - f[None]) / (edges[2:] - edges[1:-1])[:, None]
    B = np.maximum(0, np.minimum(lower, upper)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    np.testing.assert_allclose(mel_basis(), B, rtol=1e-4, atol=1e-7)


def test_hann_window_shorter_than_fft_is_centred():
    w = hann_window(400, 800)
    ref = librosa.util.pad_center(scipy.signal.get_window('hann', 400, fftbins=True), size=800)
    np.testing.assert_allclose(w, ref, atol=1e-12)
    assert hann_window(800, 800).sum() == pytest.approx(400)


def test_output_range_and_dtype_on_loud_input():
    mel = melspectrogram(1000 * speechlike())
    assert mel.dtype == np.float32 and mel.max() == 4 and mel.min() >= -4


@pytest.mark.parametrize("bad,msg", [(np.zeros((2, 100)), "1-D"), (np.zeros(0), "empty"),
                                     (np.array([0.1, np.nan] * 2000), "NaN"), (np.array([0.1, np.inf] * 2000), "NaN")])
def test_melspectrogram_rejects_bad_arrays(bad, msg):
    with pytest.raises(ValueError, match=msg):
        melspectrogram(bad)


# ---------------------------------------------------------------- index math

def test_mel_index_is_exact_and_equals_official_float_formula_at_25fps():
    k = np.arange(200_000)
    official = (80.0 * (k / 25.0)).astype(int)
    assert (official == 16 * k // 5).all()
    assert all(mel_index(i) == 16 * i // 5 for i in range(0, 200_000, 997))
    assert mel_index(199_999) == official[-1]
    with pytest.raises(ValueError):
        mel_index(-1)


def test_mel_index_other_rates():
    assert mel_index(3, fps=30) == 8             # 80 * 3 / 30 = 8 exactly
    assert mel_index(30, fps=30) == 80
    assert mel_index(1001, fps=30000 / 1001) == 80 * 1001 * 1001 // 30000


def test_documented_window_examples():
    ramp = np.tile(np.arange(200, dtype=np.float32), (80, 1))
    assert frame_mel_windows(ramp, 1)[:, 0, 0].tolist() == [0, 3, 6, 9, 12]
    assert frame_mel_windows(ramp, 2)[:, 0, 0].tolist() == [3, 6, 9, 12, 16]
    assert sync_mel_window(ramp, 2)[0].tolist() == list(range(6, 22))
    assert frame_mel_windows(ramp, 3, T=3).shape == (3, 80, 16)
    with pytest.raises(ValueError, match="start_frame must be"):
        frame_mel_windows(ramp, 0)


def test_windows_that_run_past_the_audio_are_rejected():
    mel = np.zeros((80, 40), np.float32)
    assert sync_mel_window(mel, 7).shape == (80, 16)  # rows 22..37
    with pytest.raises(ValueError, match="only 40"):
        sync_mel_window(mel, 8)                        # rows 25..40
    with pytest.raises(ValueError):
        frame_mel_windows(mel, 5)                      # last frame 9 uses the window of frame 8
    with pytest.raises(ValueError, match="num_mels, T"):
        sync_mel_window(np.zeros(100), 0)


def official_chunk_count(n, fps=25.0):
    "The official inference loop (wav2lip.md §h.2 step 3), float multiplier and all."
    m, i, count = 80.0 / fps, 0, 0
    while True:
        start = int(i * m)
        count += 1
        if start + 16 > n:
            return count
        i += 1


@pytest.mark.parametrize("n", [16, 17, 19, 20, 161, 500, 1601])
def test_inference_chunks_count_and_contents(n):
    ramp = np.tile(np.arange(n, dtype=np.float32), (80, 1))
    chunks = inference_mel_chunks(ramp)
    assert len(chunks) == official_chunk_count(n)
    assert chunks.shape[1:] == (80, 16)
    assert chunks[:-1, 0, 0].tolist() == [16 * i // 5 for i in range(len(chunks) - 1)]
    assert chunks[-1, 0].tolist() == list(range(n - 16, n))
    assert len(inference_mel_chunks(ramp, pad_last=False)) == len(chunks) - 1


def test_two_second_clip_gives_47_chunks():
    mel = melspectrogram(speechlike(32000))
    assert mel.shape[1] == 161 and len(inference_mel_chunks(mel)) == 47


def test_inference_chunks_need_one_window():
    with pytest.raises(ValueError, match="fewer than one 16-frame window"):
        inference_mel_chunks(np.zeros((80, 15), np.float32))


# ---------------------------------------------------------------- reading files

def ffmpeg(*args):
    subprocess.run([get_ffmpeg_exe(), '-nostdin', '-v', 'error', '-y', *map(str, args)], check=True)


@pytest.fixture(scope="module")
def wav16(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    x = speechlike(16000)
    sf.write(d / "speech.wav", x, 16000, subtype='FLOAT')
    return d, x


def test_load_wav_16k_wav_is_bit_exact(wav16):
    d, x = wav16
    np.testing.assert_array_equal(load_wav(d / "speech.wav"), x)


def test_load_int16_wav_scaled_like_librosa(tmp_path):
    sf.write(tmp_path / "pcm.wav", np.array([0, 16384, -32768] * 2000, np.int16), 16000)
    assert load_wav(tmp_path / "pcm.wav")[:3].tolist() == [0.0, 0.5, -1.0]


def test_load_stereo_resampled(tmp_path):
    t = np.arange(22050 * 2) / 22050
    left, right = 0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "st.flac", np.stack([left, right], 1), 22050)
    y = load_wav(tmp_path / "st.flac")
    assert y.dtype == np.float32 and len(y) == 32000
    assert abs(np.abs(y[2000:-2000]).max() - 0.3) < 3e-3


@pytest.mark.parametrize("ext,codec", [(".mp3", "libmp3lame"), (".m4a", "aac"), (".mp4", "aac")])
def test_load_compressed_containers_via_ffmpeg(wav16, ext, codec):
    d, x = wav16
    out = d / f"speech{ext}"
    if ext == ".mp4":  # a real video container: a picture stream plus the speech
        ffmpeg('-f', 'lavfi', '-i', 'color=c=gray:s=64x64:r=25:d=1', '-i', d / "speech.wav",
               '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-c:a', codec, '-shortest', out)
    else:
        ffmpeg('-i', d / "speech.wav", '-c:a', codec, '-b:a', '128k', out)
    y = load_wav(out)
    assert y.dtype == np.float32 and abs(len(y) - len(x)) < 2400   # codec priming/padding
    m = min(len(x), len(y))
    lag = int(np.argmax(np.correlate(y[:m], x[2000:6000], 'valid'))) - 2000
    assert abs(lag) < 2400
    seg = slice(4000, 12000)
    xs = x[seg.start - lag:seg.stop - lag] if lag >= 0 else x[seg.start + -lag:seg.stop + -lag]
    assert np.corrcoef(y[seg], xs)[0, 1] > 0.98


def test_file_libsndfile_refuses_falls_back_to_ffmpeg(wav16, tmp_path):
    d, x = wav16
    ffmpeg('-i', d / "speech.wav", '-c:a', 'aac', '-f', 'mp4', tmp_path / "misnamed.wav")   # an m4a named .wav
    assert abs(len(load_wav(tmp_path / "misnamed.wav")) - len(x)) < 2400


def test_load_8k_wav_in_video_container_is_resampled_by_ffmpeg(tmp_path):
    sf.write(tmp_path / "a8k.wav", speechlike(8000)[:8000], 8000)
    ffmpeg('-i', tmp_path / "a8k.wav", '-c:a', 'aac', tmp_path / "a8k.mkv")
    assert abs(len(load_wav(tmp_path / "a8k.mkv")) - 16000) < 2400


# ---------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_wav(tmp_path / "missing.wav")


@pytest.mark.parametrize("name", ["garbage.wav", "garbage.mp3", "garbage.mp4"])
def test_unreadable_file_names_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match=name):
        load_wav(tmp_path / name)


def test_video_without_audio_stream(tmp_path):
    ffmpeg('-f', 'lavfi', '-i', 'color=c=gray:s=64x64:r=25:d=1', '-c:v', 'libx264', '-pix_fmt', 'yuv420p',
           tmp_path / "mute.mp4")
    with pytest.raises(ValueError, match="mute.mp4"):
        load_wav(tmp_path / "mute.mp4")


@pytest.mark.parametrize("data,msg", [
    (np.zeros(0, np.float32), "empty"),
    (np.full(2999, 0.1, np.float32), "too short"),
    (np.zeros(16000, np.float32), "silent"),
    (np.full(16000, 5e-6, np.float32), "silent"),
    (np.r_[np.full(8000, 0.1), np.nan, np.full(8000, 0.1)].astype(np.float32), "NaN"),
    (np.r_[np.full(8000, 0.1), np.inf, np.full(8000, 0.1)].astype(np.float32), "NaN/inf"),
])
def test_bad_content_names_the_file(tmp_path, data, msg):
    sf.write(tmp_path / "bad.wav", data, 16000, subtype='FLOAT')
    with pytest.raises(ValueError, match=f"bad.wav.*{msg}"):
        load_wav(tmp_path / "bad.wav")


def test_allow_silence_and_minimum_length(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(3000, np.float32), 16000, subtype='FLOAT')
    y = load_wav(tmp_path / "quiet.wav", allow_silence=True)
    assert len(y) == 3000 and melspectrogram(y).shape == (80, 16)   # exactly one window
    check_waveform(np.zeros(1500), sr=8000, allow_silence=True)     # 1500 samples at 8 kHz = 0.1875 s
    with pytest.raises(ValueError, match="too short"):
        check_waveform(np.zeros(1499), sr=8000, allow_silence=True)
