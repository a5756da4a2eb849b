"""Events from window probabilities (model/events.py), their output files and the thresholds sidecar."""
import csv
import json

import numpy as np
import pytest

from model.events import (CSV_HEADER, RAVEN_HEADER, SUFFIXES, Event, detect_events, events_text,
                          load_thresholds, output_path, parse_thresholds, place, read_events,
                          save_thresholds, smooth, threshold_vector, thresholds_path, write_atomic)

HOP, LENGTH = 1.0, 3


def detect(column, thresholds=0.5, duration=None, classes=('a',), **kw):
    """Events of probabilities given per window (one column, or a (W, C) array), windows 1 s apart."""
    probs = np.asarray(column, dtype=float)
    probs = probs[:, None] if probs.ndim == 1 else probs
    starts = np.arange(len(probs)) * HOP
    duration = len(probs) - 1 + LENGTH if duration is None else duration
    return detect_events(probs, starts, duration, list(classes), thresholds, HOP, LENGTH, **kw)


def spans(events):
    return [(ev.onset, ev.offset, ev.label) for ev in events]


def test_threshold_and_hop_centred_times():
    # windows start at 0..5 s (3 s long): window i stands for [i + 1, i + 2] s
    probs = [0.1, 0.6, 0.7, 0.2, 0.1, 0.1]
    assert spans(detect(probs, 0.5)) == [(2.0, 4.0, 'a')]
    assert spans(detect(probs, 0.65)) == [(3.0, 4.0, 'a')]
    assert detect(probs, 0.75) == []
    # probability equal to the threshold counts as active
    assert spans(detect(probs, 0.7)) == [(3.0, 4.0, 'a')]


def test_file_start_and_end_belong_to_first_and_last_window():
    # 10.5 s file: windows start at 0..9 s, the last ones cut at the end
    probs = np.zeros(10)
    probs[[0, 9]] = 0.9
    assert spans(detect(probs, duration=10.5)) == [(0.0, 2.0, 'a'), (10.0, 10.5, 'a')]
    assert spans(detect(np.ones(10) * 0.9, duration=10.5)) == [(0.0, 10.5, 'a')]
    # a recording shorter than one window is one window: the event is the whole file
    assert spans(detect([0.9], duration=0.7)) == [(0.0, 0.7, 'a')]


def test_placement_tiles_the_file():
    starts = np.arange(19) * 0.5  # 0.5 s hop, 3 s windows, 10.25 s file
    onsets, offsets = place(np.arange(19), np.arange(19), starts, 0.5, 3, 10.25)
    assert onsets[0] == 0.0 and offsets[-1] == 10.25
    np.testing.assert_allclose(onsets[1:], offsets[:-1])  # no gap, no overlap
    np.testing.assert_allclose(onsets[1:5], starts[1:5] + 1.25)  # centre - hop / 2


def test_per_class_thresholds_and_polyphony():
    probs = np.array([[0.9, 0.1, 0.6],
                      [0.9, 0.6, 0.6],
                      [0.9, 0.6, 0.1],
                      [0.1, 0.1, 0.1]])
    events = detect(probs, {'default': 0.5, 'c': 0.7}, classes=('a', 'b', 'c'))
    # a and b overlap in time: both reported; c's 0.6 is under its own 0.7
    assert spans(events) == [(0.0, 4.0, 'a'), (2.0, 4.0, 'b')]
    events = detect(probs, 0.5, classes=('a', 'b', 'c'))
    assert spans(events) == [(0.0, 4.0, 'a'), (0.0, 3.0, 'c'), (2.0, 4.0, 'b')]


def test_background_is_never_an_event():
    probs = np.array([[0.99, 0.01], [0.99, 0.9], [0.99, 0.01]])
    events = detect(probs, 0.5, classes=('background', 'siren'), background=['background'])
    assert spans(events) == [(2.0, 3.0, 'siren')]
    # a background name the model does not have is ignored
    assert len(detect(probs, 0.5, classes=('background', 'siren'), background=['noise'])) == 2


def test_smoothing():
    gap = [0.9, 0.9, 0.1, 0.9, 0.9]
    assert len(detect(gap, smoothing=1)) == 2
    assert spans(detect(gap, smoothing=3)) == [(0.0, 7.0, 'a')]
    spike = [0.1, 0.1, 0.9, 0.1, 0.1]
    assert len(detect(spike, smoothing=1)) == 1 and detect(spike, smoothing=3) == []
    # the ends repeat the edge windows: a run at the start survives a 5-window filter
    assert spans(detect([0.9, 0.9, 0.1, 0.1, 0.1, 0.1], smoothing=5)) == [(0.0, 3.0, 'a')]
    for bad in (0, 2, -1, 1.5, True):
        with pytest.raises(ValueError, match='odd'):
            smooth(np.ones((4, 1)), bad)


def test_smoothing_equals_scipys_median_filter():
    from scipy.ndimage import median_filter  # the oracle: smooth() spares the scripts its import
    rng = np.random.default_rng(1)
    for windows, size in ((2, 5), (3, 3), (7, 7), (50, 9), (600, 3)):
        probs = rng.random((windows, 4)).astype(np.float32)
        expected = median_filter(probs, size=(size, 1), mode='nearest')
        np.testing.assert_array_equal(smooth(probs, size), expected)


def test_merge_gap_and_min_length():
    probs = [0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.8]
    assert spans(detect(probs)) == [(0.0, 3.0, 'a'), (4.0, 5.0, 'a'), (8.0, 10.0, 'a')]
    # one quiet window between runs is a 1 s gap
    assert spans(detect(probs, merge_gap=1.0)) == [(0.0, 5.0, 'a'), (8.0, 10.0, 'a')]
    assert len(detect(probs, merge_gap=0.99)) == 3
    assert spans(detect(probs, merge_gap=3.0)) == [(0.0, 10.0, 'a')]
    # events shorter than min_length are dropped after merging
    assert spans(detect(probs, min_length=1.5)) == [(0.0, 3.0, 'a'), (8.0, 10.0, 'a')]
    assert spans(detect(probs, min_length=1.5, merge_gap=1.0)) == [(0.0, 5.0, 'a'), (8.0, 10.0, 'a')]


def test_confidence_is_the_highest_smoothed_probability():
    events = detect([0.1, 0.6, 0.8, 0.7, 0.1, 0.95, 0.1], merge_gap=1.0)
    assert [ev.confidence for ev in events] == [0.95]
    events = detect([0.1, 0.6, 0.8, 0.7, 0.1], smoothing=3)
    assert events[0].confidence == pytest.approx(0.7)  # median of (0.6, 0.8, 0.7)
    assert all(ev.confidence >= 0.5 for ev in detect(np.random.default_rng(0).random(50)))


def test_events_equal_the_union_of_active_window_segments():
    # every instant belongs to the window whose segment holds it; events are the
    # maximal intervals of active instants (no merging, no minimum length)
    rng = np.random.default_rng(3)
    hop, length, duration = 0.5, 3, 12.3
    starts = np.arange(0.0, duration - 1.0 + 1e-9, hop)
    probs = rng.random((len(starts), 3))
    events = detect_events(probs, starts, duration, ['x', 'y', 'z'], 0.6, hop, length)
    grid = np.arange(0.0005, duration, 0.001)
    owner = np.clip(np.floor((grid - (starts[0] + length / 2 - hop / 2)) / hop), 0, len(starts) - 1)
    for k, label in enumerate('xyz'):
        expected = probs[owner.astype(int), k] >= 0.6
        got = np.zeros_like(expected)
        for ev in events:
            if ev.label == label:
                got |= (grid > ev.onset) & (grid < ev.offset)
        np.testing.assert_array_equal(got, expected)


def test_shapes_are_checked():
    with pytest.raises(ValueError):
        detect_events(np.ones((3, 2)), [0, 1, 2], 5.0, ['a'], 0.5, 1.0, 3)
    with pytest.raises(ValueError):
        detect_events(np.ones((3, 1)), [0, 1], 5.0, ['a'], 0.5, 1.0, 3)
    assert detect_events(np.zeros((0, 1)), [], 0.5, ['a'], 0.5, 1.0, 3) == []


########################## thresholds ##########################

def test_parse_thresholds():
    assert parse_thresholds(0.3) == {'default': 0.3}
    assert parse_thresholds('0.3') == {'default': 0.3}
    assert parse_thresholds("{'default': 0.4, 'b': 0.8}", ['a', 'b']) == {'default': 0.4, 'b': 0.8}
    assert parse_thresholds('{"a": 0.2, "b": 0.8}', ['a', 'b']) == {'a': 0.2, 'b': 0.8}
    assert parse_thresholds(np.float32(0.5)) == {'default': 0.5}
    np.testing.assert_allclose(threshold_vector({'default': 0.4, 'b': 0.8}, ['a', 'b', 'c']),
                               [0.4, 0.8, 0.4])


@pytest.mark.parametrize('bad, match', [
    (0, 'between 0 and 1'), (1, 'between 0 and 1'), (1.5, 'between 0 and 1'), (-0.1, 'between 0 and 1'),
    (float('nan'), 'between 0 and 1'), (True, 'between 0 and 1'), ('high', 'neither'),
    ("{'default': 0.5, 'b': 1.2}", 'between 0 and 1'), ("{'default': 0.5, 'dog': 0.7}", 'unknown class'),
    ("{'a': 0.5}", "no 'default'"), ('[0.5]', 'between 0 and 1'), ('__import__("os")', 'neither'),
])
def test_parse_thresholds_refuses(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_thresholds(bad, ['a', 'b'])


def test_thresholds_sidecar(tmp_path):
    model = tmp_path / 'AED_Demo_model_best.pt'
    path = thresholds_path(model)
    assert path == tmp_path / 'AED_Demo_model_best.thresholds.json'
    assert load_thresholds(path) is None  # nothing tuned yet
    save_thresholds(path, {'default': 0.5, 'siren': 0.35}, {'tuned_on': 'scenes/wav'})
    assert load_thresholds(path, ['siren', 'hum']) == {'default': 0.5, 'siren': 0.35}
    assert json.loads(path.read_text())['tuned_on'] == 'scenes/wav'
    with pytest.raises(ValueError, match='unknown class'):
        load_thresholds(path, ['hum'])  # a model with other classes
    for text in ('{"thresholds": {"default": 2}}', '{"default": 0.5}', 'not json'):
        path.write_text(text)
        with pytest.raises(ValueError, match='AED_Demo_model_best.thresholds.json'):
            load_thresholds(path)
    with pytest.raises(ValueError):
        save_thresholds(path, {'default': 0})


########################## output files ##########################

EVENTS = [Event(0.0, 2.5, 'siren', 0.91234), Event(1.25, 3.0, 'dog bark', 0.5),
          Event(7.0, 9.125, 'siren', 0.75)]


@pytest.mark.parametrize('fmt', sorted(SUFFIXES))
def test_every_format_reads_back(fmt):
    text = events_text(EVENTS, fmt, 'rec, one.wav', 22050)
    back = read_events(text, fmt)
    assert [(e.onset, e.offset, e.label) for e in back] == [(e.onset, e.offset, e.label) for e in EVENTS]
    if fmt != 'audacity':  # Audacity labels carry no confidence
        assert [e.confidence for e in back] == pytest.approx([0.9123, 0.5, 0.75], abs=1e-4)
    assert events_text([], fmt).count('\n') == (1 if fmt in ('raven', 'csv') else 0)


def test_raven_table_parses_with_its_header():
    text = events_text(EVENTS, 'raven', 'rec.wav', 16000)
    assert text.splitlines()[0] == ('Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t'
                                    'Low Freq (Hz)\tHigh Freq (Hz)\tClass\tConfidence')
    rows = list(csv.DictReader(text.splitlines(), delimiter='\t'))
    assert list(rows[0]) == RAVEN_HEADER
    assert [r['Selection'] for r in rows] == ['1', '2', '3']
    assert {(r['View'], r['Channel'], r['Low Freq (Hz)'], r['High Freq (Hz)']) for r in rows} == \
        {('Spectrogram 1', '1', '0', '16000')}
    assert rows[1]['Class'] == 'dog bark' and rows[2]['End Time (s)'] == '9.125'


def test_csv_json_and_audacity_layout():
    rows = list(csv.DictReader(events_text(EVENTS, 'csv', 'a,b.wav').splitlines()))
    assert list(rows[0]) == CSV_HEADER and {r['file'] for r in rows} == {'a,b.wav'}
    first = events_text(EVENTS, 'csv', 'x.wav', header=False).splitlines()[0]
    assert first == 'x.wav,0.000,2.500,siren,0.9123'
    records = [json.loads(line) for line in events_text(EVENTS, 'json', 'x.wav').splitlines()]
    assert records[2] == {'file': 'x.wav', 'start': 7.0, 'end': 9.125, 'label': 'siren', 'confidence': 0.75}
    assert events_text(EVENTS, 'audacity').splitlines()[1] == '1.250\t3.000\tdog bark'
    with pytest.raises(ValueError, match='unknown events format'):
        events_text(EVENTS, 'xml')


def test_output_path():
    assert output_path('recs/rec.01.wav', 'raven', 'out').as_posix() == 'out/rec.01.selections.txt'
    assert output_path('rec.flac', 'audacity', 'out').name == 'rec.labels.txt'
    assert output_path('rec.wav', 'csv', 'out').name == 'rec.events.csv'
    assert output_path('rec.wav', 'json', 'out').name == 'rec.events.jsonl'
    assert output_path('in/a/rec.wav', 'raven', 'out', 'in').as_posix() == 'out/a/rec.selections.txt'


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'sub' / 'rec.selections.txt'
    write_atomic(path, 'old\n')
    write_atomic(path, 'new\n')
    assert path.read_text() == 'new\n'

    def interrupted(self, text, encoding=None):
        open(self, 'w').write(text[:2])  # a half-written temporary file
        raise KeyboardInterrupt
    monkeypatch.setattr('pathlib.Path.write_text', interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, 'newer\n')
    monkeypatch.undo()
    assert path.read_text() == 'new\n'
    assert [p.name for p in path.parent.iterdir()] == ['rec.selections.txt']  # no temporary left
