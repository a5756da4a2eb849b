"""make_demo.py's background class and annotated scenes."""
import numpy as np
import pytest
import soundfile as sf
from scipy.ndimage import median_filter
from scipy.signal import butter, sosfilt

from dataset import make_demo
from model.sed import read_annotations

SCENE_SECONDS = 30.0


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp('scenes')
    counts = make_demo.main(['--out', str(root), '--train', '3', '--test', '0', '--no-examples',
                             '--scenes', '4', '--scene-seconds', str(SCENE_SECONDS)])
    return root, counts


def test_layout_and_annotations_parse(scenes):
    root, counts = scenes
    names = ['scene_00_ebr-6', 'scene_01_ebr+0', 'scene_02_ebr+6', 'scene_03_ebr-6']
    assert counts['scenes'] == 4
    assert sorted(p.name for p in (root / 'scenes' / 'wav').iterdir()) == [n + '.wav' for n in names]
    assert sorted(p.name for p in (root / 'scenes' / 'annotations').iterdir()) == [n + '.txt' for n in names]
    for name in names:
        info = sf.info(str(root / 'scenes' / 'wav' / (name + '.wav')))
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, 'PCM_16')
        assert info.frames == SCENE_SECONDS * 44100
        events, warnings = read_annotations(root / 'scenes' / 'annotations' / (name + '.txt'),
                                            duration=SCENE_SECONDS)
        assert warnings == [] and len(events) >= 4
        assert {ev.label for ev in events} <= set(make_demo.CLASSES)
        assert all(0.1 < ev.offset - ev.onset <= 4.0 for ev in events)  # 1-4 s, trimmed to the sound


def residual(root, index, ebr):
    """The scene file minus its (rescaled) background, the background, and the events, from scene_parts."""
    background, events = make_demo.scene_parts(SCENE_SECONDS, 1337, index, ebr)
    x, _ = sf.read(str(root / 'scenes' / 'wav' / (make_demo.scene_name(index, ebr) + '.wav')), dtype='int16')
    np.testing.assert_array_equal(x, make_demo.mix_scene(background, events))  # the file is this mix
    mix = background.copy()
    for start, sig, _ in events:
        mix[start:start + len(sig)] += sig
    gain = 0.8 * 32767 / np.max(np.abs(mix))
    return x - background * gain, background * gain, events


@pytest.mark.parametrize('index, ebr', [(0, -6.0), (1, 0.0), (2, 6.0)])
def test_events_are_where_annotated_at_the_ebr(scenes, index, ebr):
    root, _ = scenes
    rest, background, events = residual(root, index, ebr)
    name = make_demo.scene_name(index, ebr)
    annotated = read_annotations(root / 'scenes' / 'annotations' / (name + '.txt'))[0]
    inside = np.zeros(len(rest), dtype=bool)
    for ev in annotated:
        inside[int(round(ev.onset * 44100)):int(round(ev.offset * 44100))] = True
    # outside the annotated spans the file is the background (to int16 rounding)
    assert np.max(np.abs(rest[~inside])) <= 0.5 + 1e-6
    # each annotated event sounds from its first to its last sample, at the EBR (its RMS over
    # its span against the background's), measured on the file where no other event overlaps
    for ev in annotated:
        a, b = int(round(ev.onset * 44100)), int(round(ev.offset * 44100))
        alone = sum(max(0, min(b, int(o.offset * 44100)) - max(a, int(o.onset * 44100)))
                    for o in annotated if o != ev) == 0
        if alone:
            peak = np.max(np.abs(rest[a:b]))  # first and last sample over 5 % of the peak (less rounding)
            assert np.abs(rest[a]) > 0.04 * peak and np.abs(rest[b - 1]) > 0.04 * peak, ev
            measured = 20 * np.log10(np.sqrt(np.mean(rest[a:b] ** 2) / np.mean(background[a:b] ** 2)))
            assert measured == pytest.approx(ebr, abs=0.05), ev
    assert [(round(s / 44100, 6), round((s + len(sig)) / 44100, 6), label) for s, sig, label in events] == \
        [(ev.onset, ev.offset, ev.label) for ev in annotated]


def test_scenes_are_slightly_polyphonic(scenes):
    root, _ = scenes
    overlaps = events = 0
    for path in sorted((root / 'scenes' / 'annotations').iterdir()):
        annotated = read_annotations(path)[0]
        events += len(annotated)
        for i, ev in enumerate(annotated):
            later = [o for o in annotated[i + 1:] if o.onset < ev.offset]
            assert len(later) <= 1 and all(o.label != ev.label for o in later)  # at most two at once
            overlaps += len(later)
    assert 1 <= overlaps <= events // 3


def test_overlapping_events_are_of_two_classes(monkeypatch):
    # many scenes' timelines (a flat background keeps this fast): at most two events at once,
    # never of one class, and a fair share of overlaps
    monkeypatch.setattr(make_demo, 'make_background', lambda n, rng: np.ones(n))
    overlaps = events = 0
    for seed in range(10):
        parts = make_demo.scene_parts(60.0, seed, 0, 0.0)[1]
        spans = [(start, start + len(sig), label) for start, sig, label in parts]
        events += len(spans)
        for i, (a, b, label) in enumerate(spans):
            later = [other for c, _, other in spans[i + 1:] if c < b]
            assert len(later) <= 1 and label not in later
            overlaps += len(later)
    assert 0.1 * events < overlaps < 0.3 * events


def level_deviation_db(x, rate):
    """Largest deviation (dB) of 50 ms frame energies above 200 Hz from their median: gaps and onsets."""
    x = sosfilt(butter(4, 200, 'highpass', fs=rate, output='sos'), x)
    n = int(0.05 * rate)
    energy = 10 * np.log10(np.mean(np.lib.stride_tricks.sliding_window_view(x, n)[::n] ** 2, axis=1))
    return np.max(np.abs(energy - np.median(energy)))


def tonality(x, rate):
    """Highest ratio of the file's magnitude spectrum (200 Hz-16 kHz) to its local median: tonal lines."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate)
    band = (freqs > 200) & (freqs < 16000)
    return np.max((spec / np.maximum(median_filter(spec, size=201), 1e-12))[band])


def test_background_class_has_no_events(scenes):
    root, _ = scenes
    measured = {}
    for name in ['background', *make_demo.CLASSES]:
        files = sorted((root / 'train' / 'wav' / name).glob('*.wav'))
        assert len(files) == 3
        signals = [sf.read(str(p)) for p in files]
        measured[name] = [(level_deviation_db(x, r), tonality(x, r)) for x, r in signals]
    # stationary (no gaps, no onsets) and without tonal lines ...
    assert all(dev < 8 and tone < 8 for dev, tone in measured['background'])
    # ... which the gated and the tonal event classes are not
    for name in ('beeps', 'clicks', 'noise_bursts'):
        assert all(dev > 10 for dev, _ in measured[name]), name
    for name in ('beeps', 'hum'):
        assert all(tone > 20 for _, tone in measured[name]), name


def test_switches(tmp_path):
    counts = make_demo.main(['--out', str(tmp_path), '--train', '1', '--test', '1', '--seconds', '1',
                             '--no-examples', '--no-background', '--scenes', '0'])
    assert counts == {'train': 5, 'test': 5, 'examples': 0, 'scenes': 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test', 'train']
    assert 'background' not in {p.name for p in (tmp_path / 'train' / 'wav').iterdir()}


@pytest.mark.parametrize('bad', [['--scenes', '-1'], ['--scene-seconds', '5'], ['--ebrs', 'nan'],
                                 ['--ebrs', 'inf', '0']])
def test_bad_scene_arguments(tmp_path, bad):
    with pytest.raises(SystemExit):
        make_demo.main(['--out', str(tmp_path)] + bad)
    assert not any(tmp_path.iterdir())
