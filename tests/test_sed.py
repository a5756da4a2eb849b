"""Annotation files, sed_eval scores, the threshold sweep and tuning (model/sed.py)."""
import numpy as np
import pytest
import sed_eval

from model.events import Event, detect_events, events_text
from model.sed import (SWEEP, AnnotationError, evaluate, find_annotation, label_list, read_annotations,
                       threshold_sweep, tune_thresholds)


def write(path, text):
    path.write_text(text)
    return path


########################## annotation files ##########################

def test_dcase_tabs_spaces_commas_and_extra_columns(tmp_path):
    text = ('onset\toffset\tevent_label\n'  # a header line
            '0.5\t1.25\tdog bark\n'
            '\n'
            'a001.wav\t2\t3.5\tsiren\n'  # leading file name
            'audio/a001.wav\tstreet\t4.0\t5.0\tcar\tmixture\ta001\n'  # TUT-SED columns
            '6 7.5 door knock\n'  # spaces: the label is the rest of the line
            'a001.wav,8,9,beeps\n')
    events, warnings = read_annotations(write(tmp_path / 'a.txt', text))
    assert [(e.onset, e.offset, e.label) for e in events] == [
        (0.5, 1.25, 'dog bark'), (2.0, 3.5, 'siren'), (4.0, 5.0, 'car'), (6.0, 7.5, 'door knock'),
        (8.0, 9.0, 'beeps')]
    assert warnings == []


def test_numeric_file_name_column_is_not_taken_for_times(tmp_path):
    events, _ = read_annotations(write(tmp_path / 'a.txt', '12\t0.5\t1.0\tbeeps\n'))
    assert events == [Event(0.5, 1.0, 'beeps')]


def test_raven_selection_table(tmp_path):
    ours = events_text([Event(1.0, 2.0, 'siren', 0.9), Event(3.0, 4.5, 'hum', 0.7)], 'raven')
    events, _ = read_annotations(write(tmp_path / 'rec.selections.txt', ours))
    assert events == [Event(1.0, 2.0, 'siren'), Event(3.0, 4.5, 'hum')]
    # Raven's own export: each selection in the waveform and the spectrogram view, an Annotation column
    raven = ('Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t'
             'Annotation\n'
             '1\tWaveform 1\t1\t0.5\t1.5\t0\t22050\tsiren\n'
             '1\tSpectrogram 1\t1\t0.5\t1.5\t0\t22050\tsiren\n'
             '2\tSpectrogram 1\t1\t2.0\t2.5\t100\t4000\tbeeps\n')
    events, _ = read_annotations(write(tmp_path / 'rec.Table.1.selections.txt', raven))
    assert events == [Event(0.5, 1.5, 'siren'), Event(2.0, 2.5, 'beeps')]


def test_empty_file_is_a_recording_without_events(tmp_path):
    assert read_annotations(write(tmp_path / 'a.txt', '')) == ([], [])
    assert read_annotations(write(tmp_path / 'b.txt', '\n\n')) == ([], [])


@pytest.mark.parametrize('text, match', [
    ('1.0\t2.0\tsiren\n2.0\tsiren\n', r'a\.txt line 2: expected onset, offset and label'),
    ('1.0\t2.0\t\n', 'line 1: expected'),
    ('1.0\tx\tsiren\n', 'line 1: expected'),
    ('nan\t2.0\tsiren\n', 'line 1: expected'),
    ('0.5\t1.0\t2.0\n', 'line 1: expected'),  # no label
    ('1.0\t2.0\tsiren\n3.0\t3.0\thum\n', r'line 2: onset 3 must be >= 0 and before offset 3'),
    ('4.0\t3.0\thum\n', 'line 1: onset 4 must'),
    ('-1.0\t3.0\thum\n', 'line 1: onset -1 must'),
    ('Selection\tView\tBegin Time (s)\tEnd Time (s)\n1\tS\t1\t2\n', 'needs Begin Time'),
    ('Selection\tBegin Time (s)\tEnd Time (s)\tClass\n1\t1\t\tsiren\n', 'line 2: expected begin'),
])
def test_malformed_annotations_name_file_and_line(tmp_path, text, match):
    with pytest.raises(AnnotationError, match=match) as err:
        read_annotations(write(tmp_path / 'a.txt', text))
    assert str(tmp_path / 'a.txt') in str(err.value)


def test_unreadable_annotation_file(tmp_path):
    path = tmp_path / 'a.txt'
    path.write_bytes(b'\xff\xfe\x00\x81 binary')
    with pytest.raises(AnnotationError, match='cannot read'):
        read_annotations(path)
    with pytest.raises(AnnotationError, match='cannot read'):
        read_annotations(tmp_path / 'missing.txt')


def test_events_past_the_end_are_clipped_with_a_warning(tmp_path):
    text = '1\t2\tsiren\n9\t10.5\thum\n11\t13\tbeeps\n'
    events, warnings = read_annotations(write(tmp_path / 'a.txt', text), duration=10.0)
    assert events == [Event(1, 2, 'siren'), Event(9, 10.0, 'hum')]
    assert len(warnings) == 2
    assert 'line 2' in warnings[0] and 'clipped' in warnings[0] and str(tmp_path / 'a.txt') in warnings[0]
    assert 'line 3' in warnings[1] and 'dropped' in warnings[1]
    # a rounding hair past the end is clipped without a warning
    events, warnings = read_annotations(write(tmp_path / 'b.txt', '9\t10.0004\thum\n'), duration=10.0)
    assert events == [Event(9, 10.0, 'hum')] and warnings == []


def test_find_annotation(tmp_path):
    write(tmp_path / 'rec_1.txt', '')
    write(tmp_path / 'rec[2].Table.1.selections.txt', '')
    write(tmp_path / 'rec_10.txt', '')
    assert find_annotation('audio/rec_1.wav', tmp_path) == tmp_path / 'rec_1.txt'
    assert find_annotation('rec[2].flac', tmp_path) == tmp_path / 'rec[2].Table.1.selections.txt'
    with pytest.raises(AnnotationError, match='no annotation file'):
        find_annotation('rec_3.wav', tmp_path)
    write(tmp_path / 'rec_1.csv', '')
    with pytest.raises(AnnotationError, match='several annotation files.*rec_1.txt.*rec_1.csv'):
        find_annotation('rec_1.wav', tmp_path)


########################## scores: ours against sed_eval called directly ##########################

def sed_direct(refs, ests, durations, labels):
    """sed_eval on hand-built dict lists, the oracle."""
    seg = sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=1.0)
    evt = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=0.2, percentage_of_length=0.5)
    for rec in refs:
        ref = [{'event_onset': a, 'event_offset': b, 'event_label': c} for a, b, c in refs[rec]]
        est = [{'event_onset': a, 'event_offset': b, 'event_label': c} for a, b, c in ests[rec]]
        seg.evaluate(ref, est, evaluated_length_seconds=durations[rec])
        evt.evaluate(ref, est)
    return seg, evt


def assert_same(ours, oracle, labels):
    for kind, metric in zip(('segment', 'event'), oracle):
        overall = metric.results_overall_metrics()
        got = ours[kind]['overall']
        for key, want in (('f1', overall['f_measure']['f_measure']),
                          ('precision', overall['f_measure']['precision']),
                          ('recall', overall['f_measure']['recall']),
                          ('error_rate', overall['error_rate']['error_rate'])):
            assert (got[key] is None and np.isnan(want)) or got[key] == pytest.approx(want), (kind, key)
        for label in labels:
            want = metric.results_class_wise_metrics()[label]['f_measure']['f_measure']
            got = ours[kind]['classes'][label]['f1']
            assert (got is None and np.isnan(want)) or got == pytest.approx(want), (kind, label)


CLASSES = ['a', 'b', 'c']
STARTS = np.arange(9.0)  # 3 s windows 1 s apart in an 11 s recording: window i stands for [i+1, i+2]


def probs_for(active):
    """(9, 3) probabilities: 0.9 in the given (class, first window, last window) runs, else 0.1."""
    probs = np.full((9, 3), 0.1)
    for k, i, j in active:
        probs[i:j + 1, k] = 0.9
    return probs


def test_monophonic_scores_equal_sed_eval():
    refs = {'r1': [Event(1.0, 3.0, 'a'), Event(5.0, 6.0, 'b')], 'r2': [Event(2.1, 4.0, 'c')]}
    probs = {'r1': probs_for([(0, 0, 1), (2, 6, 7)]), 'r2': probs_for([(2, 1, 2)])}
    ests = {rec: detect_events(p, STARTS, 11.0, CLASSES, 0.5, 1.0, 3) for rec, p in probs.items()}
    hand = {'r1': [(0.0, 3.0, 'a'), (7.0, 9.0, 'c')], 'r2': [(2.0, 4.0, 'c')]}  # what detection should give
    assert {rec: [(e.onset, e.offset, e.label) for e in evs] for rec, evs in ests.items()} == hand
    durations = {'r1': 11.0, 'r2': 11.0}
    ours = evaluate(refs, ests, durations, CLASSES)
    oracle = sed_direct({r: [tuple(e[:3]) for e in v] for r, v in refs.items()}, hand, durations, CLASSES)
    assert_same(ours, oracle, CLASSES)
    # by hand: segments a{1,2}, b{5}, c{2,3} annotated; a{0,1,2}, c{7,8}, c{2,3} found
    seg = ours['segment']['overall']
    assert (seg['precision'], seg['recall']) == (pytest.approx(4 / 7), pytest.approx(4 / 5))
    assert ours['event']['classes']['c']['f1'] == pytest.approx(2 / 3)  # r2's c matches, r1's is false


def test_polyphonic_scores_equal_sed_eval():
    refs = {'p': [Event(0.5, 4.0, 'a'), Event(2.0, 3.0, 'b'), Event(2.5, 7.2, 'c'), Event(8.0, 10.0, 'a')]}
    hand = {'p': [(0.4, 4.1, 'a'), (2.0, 5.0, 'b'), (2.6, 6.0, 'c'), (8.5, 9.0, 'c')]}
    ests = {'p': [Event(a, b, c, 0.9) for a, b, c in hand['p']]}
    ours = evaluate(refs, ests, {'p': 11.0}, CLASSES)
    oracle = sed_direct({'p': [tuple(e[:3]) for e in refs['p']]}, hand, {'p': 11.0}, CLASSES)
    assert_same(ours, oracle, CLASSES)
    assert ours['event']['overall']['f1'] == pytest.approx(0.5)  # a and c onsets match; b and the last do not


def test_empty_annotation_scores_equal_sed_eval():
    refs = {'e': [], 'f': [Event(1.0, 2.0, 'a')]}
    hand = {'e': [(3.0, 4.0, 'b')], 'f': [(1.0, 2.0, 'a')]}
    ests = {rec: [Event(a, b, c, 0.9) for a, b, c in v] for rec, v in hand.items()}
    durations = {'e': 6.0, 'f': 3.0}
    ours = evaluate(refs, ests, durations, CLASSES)
    assert_same(ours, sed_direct({'e': [], 'f': [(1.0, 2.0, 'a')]}, hand, durations, CLASSES), CLASSES)
    assert ours['segment']['overall']['precision'] == pytest.approx(0.5)
    assert ours['segment']['classes']['c']['f1'] is None  # never annotated, never found: undefined
    only_empty = evaluate({'e': []}, {}, {'e': 6.0}, CLASSES)
    assert only_empty['segment']['overall']['error_rate'] == 0.0


def test_durations_are_the_evaluated_lengths():
    refs, ests = {'r': [Event(0.0, 2.0, 'a')]}, {'r': [Event(0.0, 4.0, 'a', 0.9)]}
    assert evaluate(refs, ests, {'r': 2.0}, CLASSES)['segment']['overall']['precision'] == 1.0
    assert evaluate(refs, ests, {'r': 4.0}, CLASSES)['segment']['overall']['precision'] == 0.5


def test_unknown_and_background_labels():
    refs = {'r': [Event(1.0, 2.0, 'a'), Event(3.0, 4.0, 'dog'), Event(0.0, 9.0, 'background')]}
    labels, unknown = label_list(['a', 'background', 'b'], ['background'], refs)
    assert labels == ['a', 'b', 'dog'] and unknown == ['dog']
    scores = evaluate(refs, {'r': [Event(1.0, 2.0, 'a', 0.9)]}, {'r': 10.0}, labels)
    # the unknown class is a miss; the background annotation is not scored
    assert scores['segment']['overall']['recall'] == pytest.approx(0.5)
    assert scores['event']['overall']['recall'] == pytest.approx(0.5)
    assert scores['segment']['classes']['dog']['Nref'] == 1


########################## sweep and tuning ##########################

def tuning_fixture():
    """Class a: true windows 0.8, others 0.6 (needs a threshold in (0.6, 0.8]);
    class b: true windows 0.3, others 0.1 (needs one in (0.1, 0.3]); class c: never annotated."""
    rng = np.random.default_rng(5)
    recordings, references = {}, {}
    for r in range(4):
        truth = np.zeros((30, 2), dtype=bool)
        refs = []
        for k, label in enumerate('ab'):
            i = rng.integers(1, 21)  # not the first window, which also stands for the file start
            truth[i:i + 5, k] = True
            refs.append(Event(i + 1.0, i + 6.0, label))  # windows i..i+4 stand for [i+1, i+6]
        probs = np.column_stack([np.where(truth[:, 0], 0.8, 0.6), np.where(truth[:, 1], 0.3, 0.1),
                                 np.full(30, 0.2)])
        recordings[f'r{r}'] = {'probs': probs, 'starts': np.arange(30.0), 'duration': 32.0}
        references[f'r{r}'] = refs
    params = dict(classes=['a', 'b', 'c'], hop=1.0, length=3)
    return recordings, references, params


def test_tuning_beats_the_default():
    recordings, references, params = tuning_fixture()
    labels = ['a', 'b', 'c']
    thresholds, report = tune_thresholds(recordings, references, labels, params, default=0.5)
    assert 0.6 < thresholds['a'] <= 0.8 and 0.1 < thresholds['b'] <= 0.3
    assert 'c' not in thresholds and thresholds['default'] == 0.5  # no annotation to tune c on
    assert report['a']['f1'] == pytest.approx(1.0) and report['b']['f1'] == pytest.approx(1.0)
    assert report['a']['f1_at_default'] < 0.5 and report['b']['f1_at_default'] is None
    durations = {rec: r['duration'] for rec, r in recordings.items()}
    tuned, default = [evaluate(references, {rec: detect_events(r['probs'], r['starts'], r['duration'],
                                                               thresholds=t, **params)
                                            for rec, r in recordings.items()}, durations, labels)
                      for t in (thresholds, 0.5)]
    assert tuned['segment']['overall']['f1'] == pytest.approx(1.0)
    assert default['segment']['overall']['f1'] < 0.6


def test_tuning_ties_go_to_the_default():
    recordings, references, params = tuning_fixture()
    thresholds, _ = tune_thresholds(recordings, references, ['a', 'b', 'c'], params, default=0.25)
    assert thresholds['b'] == 0.25  # every value in (0.1, 0.3] is perfect for b: keep the default


def test_sweep():
    recordings, references, params = tuning_fixture()
    rows = threshold_sweep(recordings, references, ['a', 'b', 'c'], params)
    assert [t for t, _ in rows] == list(SWEEP) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    f1 = {t: m['segment']['classes'] for t, m in rows}
    assert f1[0.7]['a']['f1'] == pytest.approx(1.0) and f1[0.2]['b']['f1'] == pytest.approx(1.0)
    assert f1[0.5]['b']['f1'] is None and f1[0.9]['a']['f1'] is None
    durations = {rec: r['duration'] for rec, r in recordings.items()}
    direct = evaluate(references, {rec: detect_events(r['probs'], r['starts'], r['duration'], thresholds=0.3,
                                                      **params) for rec, r in recordings.items()},
                      durations, ['a', 'b', 'c'])
    assert rows[2][1] == direct
