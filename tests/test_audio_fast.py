"""The fast spectrogram paths of model/audio.py against plain scipy / soundfile."""
import numpy as np
import pytest
import scipy.fft
import soundfile as sf

from model import audio


def reference_rows(frames, nfft=511):
    """abs(rfft) in float64 as image rows: (bins, F), the highest bin first."""
    return np.abs(scipy.fft.rfft(np.asarray(frames, dtype=np.float64), n=nfft)).T[::-1]


@pytest.mark.parametrize('n_frames', [1, 2, 37, 511, 700])
def test_dft511_matches_scipy_rfft(n_frames):
    rng = np.random.default_rng(n_frames)
    frames = rng.standard_normal((n_frames, 511)).astype(np.float32)
    got = audio.dft511_magnitudes(frames)
    expected = reference_rows(frames)
    assert got.shape == (256, n_frames) and got.dtype == np.float32
    # float32 rounding only: far below one grey level (1 / 255) after normalisation
    assert np.abs(got - expected).max() < 1e-5 * expected.max()


def test_dft511_single_tones_land_in_their_bin():
    n = np.arange(511)
    frames = np.stack([np.cos(2 * np.pi * k * n / 511) for k in (0, 1, 36, 37, 72, 73, 219, 255)])
    got = audio.dft511_magnitudes(frames.astype(np.float32))  # (256, 8), row 0 is bin 255
    assert [255 - int(row) for row in got.argmax(axis=0)] == [0, 1, 36, 37, 72, 73, 219, 255]


def spectrogram_reference(sig, bounds, rate, seconds, nfft=511):
    """The spectrogram written out the slow, obvious way (framesig + rfft + rot90)."""
    frame_len, frame_step = audio.frame_params(rate, seconds)
    out = np.zeros((len(bounds), 256, 512))
    for i, (a, b) in enumerate(bounds):
        chunk = np.asarray(sig[a:b], dtype=np.float64)
        n = 1 if len(chunk) <= frame_len else 1 + int(np.ceil((len(chunk) - frame_len) / frame_step))
        padded = np.concatenate([chunk, np.zeros((n - 1) * frame_step + frame_len - len(chunk))])
        frames = np.stack([padded[k * frame_step:k * frame_step + frame_len] for k in range(n)])
        mag = np.rot90(np.abs(np.fft.rfft(frames, n=nfft)))
        mag = mag - mag.min()
        if mag.max() > 0:
            mag /= mag.max()
        mag = mag[:256, :512]
        out[i, :mag.shape[0], :mag.shape[1]] = mag
    return out


@pytest.mark.parametrize('rate, seconds', [(44100, 3), (44100, 2), (44100, 5), (16000, 3)])
def test_spectrograms_float_and_uint8_match_the_slow_way(rate, seconds):
    # 16 kHz makes frames shorter than 511 samples: they are zero-padded
    rng = np.random.default_rng(seconds)
    sig = (np.sin(np.arange(int(7.3 * rate)) * 0.3) + 0.1 * rng.standard_normal(int(7.3 * rate)))
    sig = sig.astype(np.float32)
    bounds = audio.split_bounds(len(sig), rate, seconds, seconds - 1)
    expected = spectrogram_reference(sig, bounds, rate, seconds)
    specs, constant = audio.spectrograms(sig, bounds, rate, seconds)
    grey, constant_grey = audio.spectrograms(sig, bounds, rate, seconds, uint8=True)
    assert specs.dtype == np.float32 and grey.dtype == np.uint8
    assert specs.shape == grey.shape == expected.shape
    assert constant == constant_grey == []
    assert np.abs(specs - expected).max() < 1e-5
    diff = np.abs(grey.astype(int) - np.rint(expected * 255))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_uint8_flags_constant_chunks():
    sig = np.zeros(5 * 44100, dtype=np.float32)
    sig[2 * 44100:] = np.random.default_rng(0).standard_normal(3 * 44100)
    bounds = audio.split_bounds(len(sig), 44100, 2, 1)
    grey, constant = audio.spectrograms(sig, bounds, 44100, 2, uint8=True)
    assert constant == [0] and grey[0].max() == 0 and grey[2].max() == 255


@pytest.mark.parametrize('subtype', ['PCM_16', 'PCM_24', 'FLOAT'])
@pytest.mark.parametrize('channels', [1, 2])
def test_load_audio_matches_soundfile_float_read(tmp_path, subtype, channels):
    data = np.random.default_rng(2).uniform(-1, 1, (22050, channels))
    path = tmp_path / 'x.wav'
    sf.write(str(path), data, 22050, subtype=subtype)
    sig, rate, _ = audio.load_audio(path)
    ref, _ = sf.read(str(path), dtype='float32', always_2d=True)
    assert rate == 22050 and sig.dtype == np.float32 and sig.shape == (22050,)
    assert np.array_equal(sig, ref.mean(axis=1) if channels > 1 else ref[:, 0])


@pytest.mark.parametrize('n, rate', [(2, 22050), (3, 96000), (32769, 22050), (100003, 48000), (70001, 8000)])
def test_blockwise_linear_resample_equals_one_np_interp(n, rate):
    sig = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    n_new = int(n * 44100 / rate)
    expected = np.interp(np.linspace(0, n - 1, n_new), np.arange(n), sig)
    got = audio.resample(sig, rate, 44100, 'linear')
    assert got.dtype == np.float32 and got.shape == (n_new,)
    assert np.abs(got - expected).max(initial=0) < 1e-6
