"""Tests for dataset/make_demo.py, the synthetic demo-dataset generator."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataset import make_demo

SCRIPT = Path(make_demo.__file__).resolve()

TINY = ['--train', '3', '--test', '2', '--seconds', '3.5', '--example-seconds', '4', '--scenes', '0']


def run(out, *extra):
    return make_demo.main(['--out', str(out)] + TINY + list(extra))


def all_files(root):
    return sorted(p.relative_to(root) for p in root.rglob('*.wav'))


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    counts = run(root)
    return root, counts


def test_layout(demo):
    root, counts = demo
    classes = sorted(p.name for p in (root / 'train' / 'wav').iterdir())
    assert len(classes) >= 4
    assert classes == sorted([*make_demo.CLASSES, make_demo.BACKGROUND])
    assert sorted(p.name for p in (root / 'test').iterdir()) == classes
    for name in classes:
        train = sorted(p.name for p in (root / 'train' / 'wav' / name).iterdir())
        test = sorted(p.name for p in (root / 'test' / name).iterdir())
        assert train == ['{}_{:03d}.wav'.format(name, i) for i in range(3)]
        assert test == ['{}_{:03d}.wav'.format(name, i) for i in range(2)]
        assert (root / 'examples' / '{}_example.wav'.format(name)).is_file() == (name in make_demo.CLASSES)
    assert counts == {'train': 3 * len(classes), 'test': 2 * len(classes),
                      'examples': len(make_demo.CLASSES), 'scenes': 0}
    assert len(all_files(root)) == sum(counts.values())


def test_audio_format_and_not_silent(demo):
    root, _ = demo
    for path in root.rglob('*.wav'):
        info = sf.info(str(path))
        assert info.samplerate == 44100
        assert info.channels == 1
        assert info.subtype == 'PCM_16'
        assert info.format == 'WAV'
        expected = 4.0 if path.parent.name == 'examples' else 3.5
        assert info.frames == int(round(expected * 44100))
        x, _ = sf.read(str(path), dtype='float64')
        peak = np.max(np.abs(x))
        assert 0.25 <= peak <= 0.95, path
        # every second of audio carries signal (at least the background hiss)
        for start in range(0, len(x) - 44100 + 1, 44100):
            assert np.std(x[start:start + 44100]) > 1e-3, path


def test_deterministic(tmp_path):
    run(tmp_path / 'a')
    run(tmp_path / 'b')
    run(tmp_path / 'c', '--seed', '2024')
    files = all_files(tmp_path / 'a')
    assert files == all_files(tmp_path / 'b') == all_files(tmp_path / 'c')
    for rel in files:
        a = (tmp_path / 'a' / rel).read_bytes()
        assert a == (tmp_path / 'b' / rel).read_bytes(), rel
        assert a != (tmp_path / 'c' / rel).read_bytes(), rel


def test_files_within_a_class_vary(demo):
    root, _ = demo
    for name in make_demo.CLASSES:
        a = (root / 'train' / 'wav' / name / '{}_000.wav'.format(name)).read_bytes()
        b = (root / 'train' / 'wav' / name / '{}_001.wav'.format(name)).read_bytes()
        assert a != b


def features(path):
    """Log spectral centroid, fraction of active frames and log spectral peakiness."""
    x, rate = sf.read(str(path), dtype='float64')
    frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::512] * np.hanning(1024)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(1024, 1.0 / rate)
    energy = (mag ** 2).sum(axis=1)
    active = energy > 0.1 * energy.max()
    centroid = (mag[active] * freqs).sum(axis=1) / mag[active].sum(axis=1)
    peakiness = mag[active].max(axis=1) / mag[active].sum(axis=1)
    return np.array([np.log(centroid.mean()), active.mean(), np.log(peakiness.mean())])


def test_classes_are_separable(demo):
    root, _ = demo
    classes = sorted(make_demo.CLASSES)
    train = {c: np.array([features(p) for p in sorted((root / 'train' / 'wav' / c).glob('*.wav'))])
             for c in classes}
    stacked = np.concatenate(list(train.values()))
    scale = stacked.std(axis=0) + 1e-9
    means = np.array([train[c].mean(axis=0) / scale for c in classes])

    # class means are well apart from each other
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert np.min(dists[~np.eye(len(classes), dtype=bool)]) > 0.5

    # a nearest-class-mean rule fitted on train labels the held-out files
    correct = total = 0
    for i, c in enumerate(classes):
        for path in sorted((root / 'test' / c).glob('*.wav')):
            guess = np.argmin(np.linalg.norm(means - features(path) / scale, axis=1))
            correct += int(guess == i)
            total += 1
    assert correct / total >= 0.9


def test_relative_out_uses_cwd_and_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_demo.main(['--out', 'rel', '--train', '1', '--test', '0', '--seconds', '1',
                    '--no-examples'])
    assert len(list((tmp_path / 'rel' / 'train' / 'wav').rglob('*.wav'))) == len(make_demo.CLASSES) + 1
    assert not (tmp_path / 'rel' / 'examples').exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / 'rel') in lines[0]


def test_default_out_is_where_the_pipeline_looks(tmp_path, monkeypatch, capsys):
    # run from another folder without --out: the files must land where AED_spec.py
    # and AED_eval.py look by default, not in the current folder
    import AED_spec
    import config
    written = []
    monkeypatch.setattr(make_demo, 'generate', lambda out, *args, **kwargs: written.append(out) or
                        {'train': 0, 'test': 0, 'examples': 0})
    monkeypatch.setattr(make_demo, 'generate_background', lambda *args: {})
    monkeypatch.setattr(make_demo, 'generate_scenes', lambda *args: 0)
    monkeypatch.chdir(tmp_path)
    make_demo.main(['--train', '1'])
    assert len(written) == 1 and written[0].is_absolute()
    assert written[0] / 'train' / 'wav' == AED_spec.parse_args([]).src
    assert written[0] / 'test' == (SCRIPT.parents[1] / config.TEST_DIR).resolve()
    assert str(written[0]) in capsys.readouterr().out


@pytest.mark.parametrize('bad', [['--train', '-1'], ['--seconds', '0.5'], ['--seed', '-3']])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(SystemExit):
        make_demo.main(['--out', str(tmp_path)] + bad)
    assert not any(tmp_path.iterdir())
