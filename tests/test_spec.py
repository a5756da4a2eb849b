"""Spectrogram extraction: pixel parity with the original's pipeline, defects, bad input."""
import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

import AED_spec
from model import audio, config_checks as check

ROOT = Path(__file__).resolve().parents[1]


def load_reference():
    spec = importlib.util.spec_from_file_location('reference_spec', ROOT / 'bench' / 'reference_spec.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logging.getLogger().setLevel(logging.ERROR)  # psf warns about truncated frames
    return module


def event_signal(rate, seconds, seed=0):
    """A sweep, a beep and noise: enough structure that every grey level is used."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    sig = 0.3 * np.sin(2 * np.pi * (300 + 1500 * t) * t)
    sig += 0.2 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 2 * t) > 0)
    sig += 0.05 * rng.standard_normal(len(t))
    return np.clip(sig, -1, 1)


def write(path, sig, rate, subtype='PCM_16'):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), sig, rate, subtype=subtype)
    return path


def parity_diff(path, seconds, overlap, int_scale=True):
    """Grey levels of AED_spec.py minus the reference's (the original's pipeline) for one file."""
    ref = load_reference()
    expected = np.rint(np.array(ref.file_spectrograms(str(path), seconds, overlap)) * 255)
    sig, rate, scale = audio.load_audio(path)
    sig = audio.resample(sig, rate, 44100, 'linear', scale if int_scale else None)
    bounds = audio.split_bounds(len(sig), 44100, seconds, overlap)
    # the uint8 grey levels exactly as AED_spec.py writes them
    got, constant = audio.spectrograms(sig, bounds, 44100, seconds, uint8=True)
    assert not constant and got.shape == expected.shape == (len(bounds), 256, 512)
    return np.abs(got.astype(int) - expected)


def matches_pixel_for_pixel(diff):
    return diff.max() <= 1 and (diff > 0).mean() < 0.01  # off by one only at rounding ties


@pytest.mark.parametrize('rate', [44100, 22050, 48000])
@pytest.mark.parametrize('seconds', [2, 3, 5])
def test_pixel_parity_with_reference(tmp_path, rate, seconds):
    path = write(tmp_path / 'a.wav', event_signal(rate, seconds + 2.6), rate)
    specs, source_rate, bounds, _ = audio.file_spectrograms(path, seconds, seconds - 1, uint8=True)
    assert source_rate == rate and specs.shape == (len(bounds), 256, 512)
    assert matches_pixel_for_pixel(parity_diff(path, seconds, seconds - 1))


@pytest.mark.parametrize('subtype', ['PCM_24', 'PCM_32'])
def test_pixel_parity_for_other_bit_depths(tmp_path, subtype):
    path = write(tmp_path / 'deep.wav', event_signal(48000, 4.6), 48000, subtype)
    assert matches_pixel_for_pixel(parity_diff(path, 3, 2))


@pytest.mark.parametrize('rate', [8000, 22050, 48000])
@pytest.mark.parametrize('peak', [20, 40, 60])
def test_pixel_parity_for_quiet_recordings(tmp_path, rate, peak):
    # a field recording peaking at `peak` LSB (-64 to -55 dBFS) at 16 bits: the
    # original rounded resampled samples back to int16, which shows at this level
    sig = event_signal(rate, 5.6, seed=peak)
    quiet = np.round(sig / np.abs(sig).max() * peak).astype(np.int16)
    path = write(tmp_path / 'quiet.wav', quiet, rate)
    assert matches_pixel_for_pixel(parity_diff(path, 3, 2))
    # the check is sharp enough: resampled floats, not rounded, would fail it
    assert not matches_pixel_for_pixel(parity_diff(path, 3, 2, int_scale=False))


@pytest.mark.parametrize('rate', [8000, 22050, 48000])
def test_resampled_integers_are_the_originals_samples(rate):
    ref = load_reference()
    pcm = np.random.default_rng(rate).integers(-32768, 32768, 2 * rate).astype(np.int16)
    expected, _ = ref.resample_linear(pcm, rate)  # interpolated, then np.round to int16
    got = audio.resample(pcm / np.float32(32768), rate, 44100, 'linear', int_scale=32768)
    assert got.dtype == np.float32 and np.array_equal(got * 32768, expected)


@pytest.mark.parametrize('fmt, subtype, scale', [
    ('WAV', 'PCM_U8', 2 ** 7), ('WAV', 'PCM_16', 2 ** 15), ('WAV', 'PCM_24', 2 ** 23),
    ('WAV', 'PCM_32', 2 ** 31), ('FLAC', 'PCM_16', 2 ** 15), ('FLAC', 'PCM_24', 2 ** 23),
    ('WAV', 'FLOAT', None), ('OGG', 'VORBIS', None), ('MP3', 'MPEG_LAYER_III', None)])
def test_resampled_integer_sources_stay_on_their_grid(tmp_path, fmt, subtype, scale):
    t = np.arange(22050) / 22050
    sig = 0.5 * np.sin(2 * np.pi * 440 * t) + 1e-3 * np.sin(2 * np.pi * 3000 * t)
    path = tmp_path / f'clip.{fmt.lower()}'
    try:
        sf.write(str(path), sig, 22050, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:  # an old libsndfile without MP3
        pytest.skip(f'this libsndfile cannot write {fmt}: {e}')
    sig, rate, int_scale = audio.load_audio(path)
    assert int_scale == scale
    out = audio.resample(sig, rate, 44100, 'linear', int_scale) * np.float64(scale or 2 ** 15)
    on_grid = np.mean(out == np.round(out))
    # integer PCM: every sample is a whole number of LSBs; float and lossy: kept as they are
    assert on_grid == 1 if scale else on_grid < 0.5


def test_sinc_resampling_also_rounds_integer_sources():
    pcm = np.random.default_rng(5).integers(-60, 60, 22050) / np.float32(32768)
    smooth = audio.resample(pcm.astype(np.float32), 22050, 44100, 'sinc')
    rounded = audio.resample(pcm.astype(np.float32), 22050, 44100, 'sinc', int_scale=32768)
    assert np.array_equal(rounded * 32768, np.round(smooth * 32768))
    assert not np.array_equal(smooth * 32768, np.round(smooth * 32768))


def test_stereo_is_averaged_then_resampled_then_rounded(tmp_path):
    rng = np.random.default_rng(4)
    left, right = rng.integers(-200, 200, (2, 22050)).astype(np.int16)
    path = write(tmp_path / 'stereo.wav', np.stack([left, right], axis=1), 22050)
    sig, rate, int_scale = audio.load_audio(path)
    assert int_scale == 32768 and np.array_equal(sig * 32768, (left / 2 + right / 2))
    mean = (left.astype(float) + right) / 2  # half-LSB values stay until resampling
    expected = np.round(np.interp(np.linspace(0, 22049, 44100), np.arange(22050), mean))
    assert np.array_equal(audio.resample(sig, rate, 44100, 'linear', int_scale) * 32768, expected)


def test_8bit_wav_is_centred(tmp_path):  # defect 13
    # scipy reads 8-bit WAV as uint8, so the original kept the offset of 128: a
    # huge DC bin that sets the image maximum and leaves the events near black
    sig = event_signal(22050, 4.6)
    eight = audio.file_spectrograms(write(tmp_path / 'u8.wav', sig, 22050, 'PCM_U8'), uint8=True)[0]
    sixteen = audio.file_spectrograms(write(tmp_path / 's16.wav', sig, 22050), uint8=True)[0]
    original = np.rint(np.array(load_reference().file_spectrograms(str(tmp_path / 'u8.wav'))) * 255)
    assert eight.shape == sixteen.shape == original.shape
    for ours, theirs, reference in zip(eight.astype(float), original, sixteen.astype(float)):
        assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.99
        assert np.abs(ours - reference).mean() < 0.5
        assert ours[:-1].max() == 255  # the events are the brightest pixels, not DC
        assert theirs[:-1].max() < 64 and np.corrcoef(theirs.ravel(), reference.ravel())[0, 1] < 0.5


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip('torch')
    sig = event_signal(44100, 5.5).astype(np.float32)
    bounds = audio.split_bounds(len(sig), 44100, 3, 2)
    np_specs, _ = audio.spectrograms(sig, bounds)
    torch_specs, _ = audio.spectrograms(torch.from_numpy(sig), bounds)
    assert isinstance(torch_specs, torch.Tensor)
    assert np.abs(torch_specs.numpy() - np_specs).max() < 2e-3


def test_split_bounds_follow_the_original_rule():
    # 10 s at step 1 s: chunks start every second; those under 1 s are dropped
    bounds = audio.split_bounds(10 * 44100, 44100, 3, 2)
    assert [(a / 44100, b / 44100) for a, b in bounds] == \
        [(s, min(s + 3, 10)) for s in range(10)]
    assert audio.split_bounds(1000, 44100, 3, 2) == [(0, 1000)]  # too short: one chunk


def test_frame_params_match_python_speech_features():
    assert audio.frame_params(44100, 3) == (882, 258)
    assert audio.frame_params(44100, 2) == (662, 300)  # 661.5 rounds half up


def test_silent_chunk_gives_zero_image_not_nan():  # defect 3
    sig = np.zeros(4 * 44100, dtype=np.float32)
    specs, constant = audio.spectrograms(sig, audio.split_bounds(len(sig), 44100, 3, 2))
    assert np.isfinite(specs).all() and specs.max() == 0
    assert constant == list(range(len(specs)))


def test_stereo_is_downmixed(tmp_path):  # defect 4
    mono = event_signal(48000, 4)
    path = write(tmp_path / 'stereo.wav', np.stack([mono, mono], axis=1), 48000)
    sig, rate, _ = audio.load_audio(path)
    assert sig.ndim == 1 and rate == 48000
    assert np.abs(sig - mono).max() < 1e-4
    specs, *_ = audio.file_spectrograms(path)
    assert specs.shape[1:] == (256, 512)


@pytest.mark.parametrize('seconds, overlap, message', [
    (3, 3, 'overlap must be at least 0'), (3, 4, 'overlap must be at least 0'),
    (3, -1, 'overlap must be at least 0'), (4, 2, 'length must be one of 2, 3, 5, 10, 30 s, got 4')])
def test_bad_length_or_overlap_is_a_clear_error(seconds, overlap, message):  # defect 10
    assert check.spec_window('length', seconds, 'overlap', overlap, 44100).startswith(message)


@pytest.mark.parametrize('fmt, subtype', [('MP3', None), ('OGG', 'VORBIS'), ('FLAC', 'PCM_24')])
def test_compressed_formats_are_read(tmp_path, fmt, subtype):
    sig = event_signal(44100, 2.5)
    path = tmp_path / f'clip.{fmt.lower()}'
    try:
        sf.write(str(path), sig, 44100, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as e:  # an old libsndfile without MP3
        pytest.skip(f'this libsndfile cannot write {fmt}: {e}')
    specs, rate, bounds, constant = audio.file_spectrograms(path)
    assert rate == 44100 and specs.shape == (len(bounds), 256, 512) and not constant
    assert specs.max() == 1.0


@pytest.mark.parametrize('method', ['linear', 'sinc'])
@pytest.mark.parametrize('rate', [22050, 48000])
def test_resample_keeps_duration_timing_and_pitch(method, rate):
    # 2 s: a 1 kHz tone of amplitude 0.5 from 0.5 s to 1.5 s, silence around it
    t = np.arange(2 * rate) / rate
    sig = (0.5 * np.sin(2 * np.pi * 1000 * t) * ((t >= 0.5) & (t < 1.5))).astype(np.float32)
    out = audio.resample(sig, rate, 44100, method)
    assert out.dtype == np.float32 and abs(len(out) - 2 * 44100) <= 1
    loud = np.flatnonzero(np.abs(out) > 0.25) / 44100
    assert abs(loud[0] - 0.5) < 1e-3 and abs(loud[-1] - 1.5) < 1e-3  # the event stays in place
    tone = out[int(0.6 * 44100):int(1.4 * 44100)]
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * 44100 / len(tone)
    assert abs(peak_hz - 1000) < 2 and abs(np.abs(tone).max() - 0.5) < 0.02
    assert np.abs(out[:int(0.45 * 44100)]).max() < 0.01  # silence stays silent


def test_unknown_resample_method_is_refused():
    with pytest.raises(ValueError, match='linear'):
        audio.resample(np.zeros(100, np.float32), 22050, 44100, 'cubic')


@pytest.fixture
def messy_dataset(tmp_path):
    """One class folder of real-world files: good, odd and broken."""
    src = tmp_path / 'wav'
    good = src / 'events'
    sig = event_signal(44100, 4)
    write(good / 'plain.wav', sig, 44100)
    write(good / 'eight bit.wav', sig, 44100, 'PCM_U8')
    write(good / 'deep.wav', sig, 44100, 'PCM_24')
    write(good / 'float.wav', sig, 44100, 'FLOAT')
    write(good / 'stereo48k.wav', np.stack([event_signal(48000, 4), event_signal(48000, 4, 1)], 1), 48000)
    write(good / 'my recording.v2.ünï.wav', sig, 44100)
    write(good / 'compressed.flac', sig, 44100, 'PCM_16')
    write(good / 'short.wav', sig[:int(0.2 * 44100)], 44100)
    write(good / 'silent.wav', np.zeros(3 * 44100), 44100)
    (good / 'corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEfmt garbage' * 10)
    (good / 'empty.wav').write_bytes(b'')
    (good / 'notes.txt').write_text('recorded on a rainy day')
    (good / '.DS_Store').write_bytes(b'\x00\x01')
    (src / 'no_audio_here').mkdir()
    return src


def run_spec(src, dst, *extra):
    return AED_spec.main(['--src', str(src), '--dst', str(dst), '--workers', '1', *extra])


def test_end_to_end_with_bad_files(messy_dataset, tmp_path, capsys):
    dst = tmp_path / 'spec'
    assert run_spec(messy_dataset, dst) == 0
    out, err = capsys.readouterr()
    out_dir = dst / 'events'
    # 4 s files at step 1 s give chunks at 0, 1, 2, 3 s
    for stem in ('plain', 'eight bit', 'deep', 'float', 'stereo48k', 'my recording.v2.ünï', 'compressed'):
        assert sorted(p.name for p in out_dir.glob(f'{stem}_*.png')) == [f'{stem}_{n}.png' for n in range(4)]
    assert [p.name for p in out_dir.glob('short_*.png')] == ['short_0.png']
    # every image is a finite 256 x 512 grey image; the silent file is all zero, not NaN
    for png in out_dir.glob('*.png'):
        img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        assert img.shape == (256, 512) and img.dtype == np.uint8
    silent = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in out_dir.glob('silent_*.png')]
    assert len(silent) == 3 and all(img.max() == 0 for img in silent)
    assert cv2.imread(str(out_dir / 'plain_0.png'), cv2.IMREAD_UNCHANGED).max() == 255
    # each bad file: one message naming it and the reason, and no output at all
    for name in ('corrupt.wav', 'empty.wav', 'notes.txt'):
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and lines[0].startswith('ERROR') and ':' in lines[0]
        assert not list(out_dir.glob(Path(name).stem + '_*'))
    assert any('notes.txt' in line and 'not a readable audio file' in line for line in err.splitlines())
    assert any('empty.wav' in line and 'file is empty' in line for line in err.splitlines())
    assert any('silent.wav' in line and 'all-zero' in line for line in err.splitlines())
    assert any('short.wav' in line and 'shorter than 1 s' in line for line in err.splitlines())
    assert any('no_audio_here' in line and 'no audio files' in line for line in err.splitlines())
    assert '.DS_Store' not in err
    assert not list(dst.rglob('*.part'))
    assert 'DONE! FILES: 9 SPECS: 32 ERRORS: 3' in out
    # the original's per-file line: the file, its sample rate before resampling, its spectrograms
    assert f"{messy_dataset / 'events' / 'plain.wav'} SAMPLE RATE: 44100 SPECS: 4" in out.splitlines()
    assert f"{messy_dataset / 'events' / 'stereo48k.wav'} SAMPLE RATE: 48000 SPECS: 4" in out.splitlines()


def test_rerun_skips_finished_files_unless_overwrite(messy_dataset, tmp_path, capsys):
    dst = tmp_path / 'spec'
    run_spec(messy_dataset, dst)
    first = (dst / 'events' / 'plain_0.png').stat().st_mtime_ns
    capsys.readouterr()
    run_spec(messy_dataset, dst)
    assert 'SKIPPED (ALREADY DONE): 9' in capsys.readouterr().out
    assert (dst / 'events' / 'plain_0.png').stat().st_mtime_ns == first
    run_spec(messy_dataset, dst, '--overwrite')
    assert 'SKIPPED (ALREADY DONE): 0' in capsys.readouterr().out


def test_parallel_workers_give_identical_images(messy_dataset, tmp_path):
    run_spec(messy_dataset, tmp_path / 'one')
    AED_spec.main(['--src', str(messy_dataset), '--dst', str(tmp_path / 'two'), '--workers', '2'])
    one = sorted((tmp_path / 'one').rglob('*.png'))
    two = sorted((tmp_path / 'two').rglob('*.png'))
    assert [p.relative_to(tmp_path / 'one') for p in one] == [p.relative_to(tmp_path / 'two') for p in two]
    assert all(np.array_equal(cv2.imread(str(a)), cv2.imread(str(b))) for a, b in zip(one, two))


def test_nothing_extracted_exits_non_zero(tmp_path, capsys):
    src = tmp_path / 'wav'
    (src / 'a').mkdir(parents=True)
    (src / 'a' / 'broken.wav').write_bytes(b'not audio at all')
    with pytest.raises(SystemExit) as exit_info:
        run_spec(src, tmp_path / 'out')
    assert exit_info.value.code not in (0, None)
    assert 'broken.wav' in capsys.readouterr().err


def test_files_sharing_a_stem_keep_their_extension_in_the_png_names(tmp_path, capsys):
    # issue 13.8: tone.wav and tone.flac in one class folder both give spectrograms
    src = tmp_path / 'wav'
    write(src / 'a' / 'tone.wav', event_signal(44100, 2), 44100)
    write(src / 'a' / 'tone.flac', event_signal(44100, 3, seed=3), 44100)
    write(src / 'a' / 'solo.wav', event_signal(44100, 2, seed=4), 44100)
    write(src / 'b' / 'tone.wav', event_signal(44100, 2, seed=5), 44100)  # alone in its class folder
    run_spec(src, tmp_path / 'out')
    out, err = capsys.readouterr()
    assert 'ERROR' not in err and 'DONE! FILES: 4 SPECS: 9 ERRORS: 0' in out
    names = sorted(p.name for p in (tmp_path / 'out' / 'a').glob('*.png'))
    assert names == ['solo_0.png', 'solo_1.png', 'tone.flac_0.png', 'tone.flac_1.png', 'tone.flac_2.png',
                     'tone.wav_0.png', 'tone.wav_1.png']
    assert sorted(p.name for p in (tmp_path / 'out' / 'b').glob('*.png')) == ['tone_0.png', 'tone_1.png']
    # each file's images are its own
    for name in ('tone.wav', 'tone.flac'):
        specs, *_ = audio.file_spectrograms(src / 'a' / name, uint8=True)
        assert np.array_equal(cv2.imread(str(tmp_path / 'out' / 'a' / f'{name}_0.png'), cv2.IMREAD_UNCHANGED),
                              specs[0])
    # a rerun finds them done under those names
    run_spec(src, tmp_path / 'out')
    assert 'SKIPPED (ALREADY DONE): 4' in capsys.readouterr().out


def test_defaults_resolve_relative_to_the_repository():
    args = AED_spec.parse_args([])
    assert args.src == ROOT / 'dataset' / 'train' / 'wav'
    assert args.dst == ROOT / 'dataset' / 'train' / 'spec'


def test_settings_are_recorded_and_a_mix_is_refused(tmp_path, capsys):
    src, dst = tmp_path / 'wav', tmp_path / 'spec'
    write(src / 'a' / 'long.wav', event_signal(44100, 6), 44100)
    run_spec(src, dst)
    assert audio.read_spec_settings(dst) == {'length': 3, 'overlap': 2, 'sample_rate': 44100,
                                             'resample': 'linear'}
    assert len(list((dst / 'a').glob('long_*.png'))) == 6
    # other settings into the same folder would mix two kinds of images
    with pytest.raises(SystemExit) as exit_info:
        run_spec(src, dst, '--overlap', '0')
    assert 'overwrite' in str(exit_info.value.code)
    # --overwrite redoes every file and removes the chunks the new settings no longer make
    run_spec(src, dst, '--overlap', '0', '--overwrite')
    assert sorted(p.name for p in (dst / 'a').glob('long_*.png')) == ['long_0.png', 'long_1.png']
    assert audio.read_spec_settings(dst)['overlap'] == 0


def settings_errors(capsys, argv):
    """Run AED_spec.py expecting a settings error: (exit code, its ERROR lines)."""
    with pytest.raises(SystemExit) as exit_info:
        AED_spec.main(argv)
    captured = capsys.readouterr()
    assert 'SPECTROGRAMS' not in captured.err and 'DONE' not in captured.out  # no work began
    return exit_info.value.code, [line for line in captured.err.splitlines() if line.startswith('ERROR')]


@pytest.mark.parametrize('flags, constants, expected', [
    (['--workers', '-3'], {}, '--workers (SPEC_WORKERS, 0 = one per CPU core) must be a whole number'),
    ([], {'SPEC_WORKERS': -1}, 'SPEC_WORKERS'),
    (['--speclength', '2'], {}, '--overlap (SPEC_OVERLAP) must be at least 0 and smaller than '
                                '--speclength (SPEC_LENGTH) = 2 s by one sample (1/44100 s) or more, got 2'),
    (['--speclength', '3', '--overlap', '-1'], {}, 'must be at least 0 and smaller than'),
    ([], {'SPEC_OVERLAP': 3}, '--overlap (SPEC_OVERLAP) must be at least 0'),
    (['--overlap', '2.99999'], {}, 'by one sample (1/44100 s) or more, got 2.99999'),  # a hop of 0 samples
    (['--speclength', '4'], {}, '--speclength (SPEC_LENGTH) must be one of 2, 3, 5, 10, 30 s'),
    ([], {'SPEC_LENGTH': 3.5}, 'SPEC_LENGTH'),
    ([], {'SAMPLE_RATE': 0}, 'SAMPLE_RATE'),
    ([], {'SAMPLE_RATE': '44100'}, 'SAMPLE_RATE'),
    ([], {'RESAMPLE_METHOD': 'cubic'}, "RESAMPLE_METHOD must be one of 'linear', 'sinc'"),
    ([], {'PNG_COMPRESSION': 10}, 'PNG_COMPRESSION'),
    ([], {'PNG_COMPRESSION': None}, 'PNG_COMPRESSION'),
])
def test_each_bad_setting_is_one_error_line(tmp_path, capsys, monkeypatch, flags, constants, expected):
    (tmp_path / 'wav' / 'a').mkdir(parents=True)
    for name, value in constants.items():
        monkeypatch.setattr(AED_spec.cfg, name, value)
    code, errors = settings_errors(capsys, ['--src', str(tmp_path / 'wav'),
                                            '--dst', str(tmp_path / 'spec'), *flags])
    assert code == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / 'spec').exists()


def test_bad_paths_are_error_lines(tmp_path, capsys, monkeypatch):
    (tmp_path / 'wav' / 'a').mkdir(parents=True)
    (tmp_path / 'file.txt').write_text('not a folder')
    code, errors = settings_errors(capsys, ['--src', str(tmp_path / 'nope'), '--dst', str(tmp_path / 'file.txt')])
    assert code == 2 and len(errors) == 2
    assert 'SRC_DIR' in errors[0] and 'does not exist' in errors[0] and 'SPEC_DIR' in errors[1]
    code, errors = settings_errors(capsys, ['--src', str(tmp_path / 'wav'), '--dst', str(tmp_path / 'wav')])
    assert code == 2 and errors == [f'ERROR: --dst (SPEC_DIR) must differ from --src: '
                                    f'{tmp_path / "wav"} holds the audio']
    monkeypatch.setattr(AED_spec.cfg, 'SRC_DIR', None)  # a config typo, not a crash
    code, errors = settings_errors(capsys, ['--dst', str(tmp_path / 'spec')])
    assert code == 2 and len(errors) == 1 and 'SRC_DIR' in errors[0]


def test_a_bug_is_a_traceback_not_a_bad_file(tmp_path, capsys, monkeypatch):
    write(tmp_path / 'wav' / 'a' / 'fine.wav', event_signal(44100, 2), 44100)

    def broken(*args, **kwargs):
        raise TypeError('a programming error')

    monkeypatch.setattr(audio, 'spectrograms', broken)  # inside file_spectrograms
    with pytest.raises(TypeError, match='a programming error'):
        run_spec(tmp_path / 'wav', tmp_path / 'spec')
    assert 'ERROR' not in capsys.readouterr().err
    # the same for a bug inside the audio reader: not "not a readable audio file"
    monkeypatch.setattr(sf.SoundFile, 'read', broken)
    with pytest.raises(TypeError):
        audio.load_audio(tmp_path / 'wav' / 'a' / 'fine.wav')


def test_write_and_encode_failures_are_error_lines(tmp_path, capsys, monkeypatch):
    src = tmp_path / 'wav'
    write(src / 'a' / 'one.wav', event_signal(44100, 2), 44100)
    write(src / 'b' / 'two.wav', event_signal(44100, 2), 44100)
    (tmp_path / 'spec').mkdir()
    (tmp_path / 'spec' / 'b').write_text('a file where class folder b should go')
    assert run_spec(src, tmp_path / 'spec') == 0
    out, err = capsys.readouterr()
    assert [line.split(':')[0] for line in err.splitlines() if 'two.wav' in line] == ['ERROR']
    assert 'FileExistsError' in err and 'DONE! FILES: 1 SPECS: 2 ERRORS: 1' in out
    monkeypatch.setattr(AED_spec.cv2, 'imencode', lambda *args: (False, None))
    with pytest.raises(SystemExit) as exit_info:
        run_spec(src, tmp_path / 'spec2')  # no file succeeds: non-zero exit
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if 'PNG encoding failed' in line] == [
        f'ERROR: {src / "a" / "one.wav"}: ValueError: PNG encoding failed',
        f'ERROR: {src / "b" / "two.wav"}: ValueError: PNG encoding failed']
    assert not list((tmp_path / 'spec2').rglob('*.png*'))


def test_the_worker_pool_is_joined_after_terminate(tmp_path, monkeypatch):
    import multiprocessing
    calls = []
    real_pool = multiprocessing.Pool

    class RecordingPool:
        def __init__(self, n):
            self.pool = real_pool(n)

        def __getattr__(self, name):
            calls.append(name)
            return getattr(self.pool, name)

    monkeypatch.setattr(multiprocessing, 'Pool', RecordingPool)
    for n in range(2):
        write(tmp_path / 'wav' / 'a' / f'{n}.wav', event_signal(44100, 2, seed=n), 44100)
    AED_spec.main(['--src', str(tmp_path / 'wav'), '--dst', str(tmp_path / 'spec'), '--workers', '2'])
    assert calls[-2:] == ['terminate', 'join']
    assert len(list((tmp_path / 'spec' / 'a').glob('*.png'))) == 4
