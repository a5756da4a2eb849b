"""AED_test.py --events and AED_eval.py --annotations (issue 15 sections 2 and 3): events from the
network's window probabilities, their files, the thresholds' sources, background classes, scores
equal to sed_eval's on AED_test's own event files, and bad input."""
import json
import re
import shutil

import numpy as np
import pytest
import sed_eval
import soundfile as sf
import torch

import AED_eval
import AED_test
from dataset import make_demo
from helpers import run_main
from model.audio import file_spectrograms
from model.events import SUFFIXES, detect_events, parse_thresholds, read_events, thresholds_path
from model.inference import prepare_windows
from model.session import load_model

# The tiny model's windows (3 s, 2 s overlap) and the detection settings every run below uses
HOP, LENGTH = 1.0, 3
DETECT = ['--smoothing', 1, '--min-length', 0, '--merge-gap', 0]



def aed_test(capsys, *argv):
    return run_main(AED_test.main, capsys, *argv)


def aed_eval(capsys, *argv):
    return run_main(AED_eval.main, capsys, *argv)


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    """Two 12 s make_demo scenes with their DCASE annotations: (recordings, annotations)."""
    root = tmp_path_factory.mktemp('scenes')
    make_demo.main(['--out', str(root), '--train', '0', '--test', '0', '--no-examples', '--no-background',
                    '--scenes', '2', '--scene-seconds', '12'])
    return root / 'scenes' / 'wav', root / 'scenes' / 'annotations'


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    """The tiny model in a folder of its own: tuned thresholds are written beside it."""
    return shutil.copy(tiny_model, tmp_path / 'tiny.pt')


def oracle(model_path, wav, thresholds, background=(), overlap=2):
    """Events of a file from probabilities computed apart from the scripts: the numpy spectrograms
    of the whole file, the network, softmax; window starts from the bounds, duration from the header."""
    model = load_model(model_path, '.', 'cpu')
    specs, _, bounds, _ = file_spectrograms(wav, LENGTH, overlap)
    with torch.no_grad():
        probs = torch.softmax(model.net(prepare_windows(specs, model.im_size)), 1).numpy()
    info = sf.info(str(wav))
    duration = int(info.frames * 44100 / info.samplerate) / 44100
    return detect_events(probs, np.array([a for a, _ in bounds]) / 44100, duration, model.classes, thresholds,
                         LENGTH - overlap, LENGTH, background=list(background)), probs


def spans(events):
    """Events as (start, end, label), from Event tuples or the JSON/table dicts, to 3 decimals."""
    return [(round(e[0], 3), round(e[1], 3), e[2]) if isinstance(e, tuple)
            else (e['start'], e['end'], e['label']) for e in events]


def json_events(out):
    """Each file's events from AED_test --json, as spans."""
    return [spans(json.loads(line)['events']) for line in out.splitlines()]


def tone(path, seconds, rate=44100):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 880 * t) * (1 + np.sin(2 * np.pi * 0.3 * t)), rate)
    return path


########################## AED_test.py --events ##########################

def test_events_are_detected_from_each_windows_probabilities(capsys, tiny_model, scenes, tmp_path):
    # 9.8 s with 3 s windows and no overlap: windows 0-3, 3-6, 6-9 s (9-9.8 s is under 1 s, dropped),
    # so the recording's end, 9.8 s, is not the last window's; and a 22.05 kHz file, resampled
    short = tone(tmp_path / 'short.wav', 9.8)
    low = tone(tmp_path / 'low.wav', 9.8, rate=22050)
    scene = sorted(scenes[0].iterdir())[0]
    for wav, overlap in ((scene, 2), (short, 0), (low, 0)):
        status, out, err = aed_test(capsys, '--filenames', wav, '--modelname', tiny_model, '--events',
                                    '--json', '--threshold', 0.15, '--overlap', overlap, *DETECT)
        assert status == 0, err
        expected, probs = oracle(tiny_model, wav, 0.15, overlap=overlap)
        assert json_events(out) == [spans(expected)]
        assert all(e['confidence'] >= 0.15 for e in json.loads(out)['events'])
    # every window has a class above 0.15 (softmax of 5), so an event runs to the recording's end
    assert probs.shape[0] == 3 and max(e.offset for e in expected) == pytest.approx(9.8)
    # several classes at once: the scene's events overlap in time
    status, out, _ = aed_test(capsys, '--filenames', scene, '--modelname', tiny_model, '--events',
                              '--json', '--threshold', 0.15, *DETECT)
    events = json_events(out)[0]
    assert any(a[2] != b[2] and a[0] < b[1] and b[0] < a[1] for a in events for b in events)


def test_per_class_thresholds_and_the_detection_flags(capsys, tiny_model, scenes):
    scene = sorted(scenes[0].iterdir())[1]
    flags = [('{"default": 0.3, "beeps": 0.9}', 1, 0, 0), ("{'default': 0.6}", 3, 4.0, 2.0)]
    model, (_, probs) = load_model(tiny_model, '.', 'cpu'), oracle(tiny_model, scene, 0.5)
    got = []
    for threshold, smoothing, min_length, merge_gap in flags:
        status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', tiny_model,
                                    '--events', '--json', '--threshold', threshold, '--smoothing', smoothing,
                                    '--min-length', min_length, '--merge-gap', merge_gap)
        assert status == 0, err
        starts = np.arange(len(probs)) * HOP  # 12 s: windows at 0..11 s (the last ones cut at 12 s)
        expected = detect_events(probs, starts, 12.0, model.classes, parse_thresholds(threshold), HOP, LENGTH,
                                 smoothing, min_length, merge_gap)
        assert json_events(out) == [spans(expected)]
        got.append(spans(expected))
    assert got[0] != got[1]  # the flags changed the events


def test_events_follow_the_files_lines_in_each_format(capsys, tiny_model, scenes):
    scene = sorted(scenes[0].iterdir())[0]
    expected, _ = oracle(tiny_model, scene, 0.3)
    for fmt in SUFFIXES:
        status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', tiny_model,
                                    '--events', '--events-format', fmt, '--threshold', 0.3, *DETECT)
        assert status == 0, err
        lines = out.split('\n')
        at = next(i for i, line in enumerate(lines) if line.startswith('PREDICTION FOR'))
        assert lines[at + 1] == f'EVENTS: {len(expected)}'
        table = '\n'.join(lines[at + 2:]).rstrip('\n') + '\n'
        assert out.endswith('\n\n')  # a blank line ends the file's block, as before
        assert spans(read_events(table, fmt)) == spans(expected)
        if fmt == 'raven':
            assert table.startswith('Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t'
                                    'High Freq (Hz)\tClass\tConfidence\n')
            assert all(row.split('\t')[6] == '22050' for row in table.splitlines()[1:])  # Nyquist


def test_out_writes_one_file_per_recording_named_after_it(capsys, tiny_model, scenes, tmp_path):
    # equal names in two folders keep their sub-folders below the common folder; rec.wav and rec.flac
    # in one folder keep their extensions
    for folder in ('site1', 'site2'):
        (tmp_path / folder).mkdir()
        shutil.copy(sorted(scenes[0].iterdir())[0], tmp_path / folder / 'rec.wav')
    data, rate = sf.read(tmp_path / 'site1' / 'rec.wav')
    sf.write(tmp_path / 'site1' / 'rec.flac', data, rate)
    expected = spans(oracle(tiny_model, tmp_path / 'site1' / 'rec.wav', 0.3)[0])
    out_dir = tmp_path / 'events'
    for fmt, suffix in SUFFIXES.items():
        status, out, err = aed_test(capsys, '--filenames', tmp_path / 'site1', tmp_path / 'site2',
                                    '--modelname', tiny_model, '--events', '--events-format', fmt,
                                    '--out', out_dir / fmt, '--threshold', 0.3, *DETECT)
        assert status == 0, err
        written = re.findall(r'^EVENTS: (\d+) -> (.+)$', out, re.M)
        assert [path for _, path in written] == [str(out_dir / fmt / name) for name in (
            f'site1/rec.flac{suffix}', f'site1/rec.wav{suffix}', f'site2/rec{suffix}')]
        for count, path in written:
            text = open(path, encoding='utf-8').read()
            assert int(count) == len(expected) and spans(read_events(text, fmt)) == expected
            if fmt == 'raven':  # High Freq: the analysis rate's Nyquist frequency
                assert {row.split('\t')[6] for row in text.splitlines()[1:]} == {'22050'}
        assert not list((out_dir / fmt).rglob('*.tmp'))


def test_an_interrupted_run_keeps_the_finished_files(capsys, tiny_model, scenes, tmp_path, monkeypatch):
    import model.inference as inference
    real = inference.predict_files

    def interrupted(*args, **kwargs):  # Ctrl-C while the second file is predicted
        results = real(*args, **kwargs)
        yield next(results)
        raise KeyboardInterrupt
    monkeypatch.setattr(inference, 'predict_files', interrupted)
    first, second = sorted(scenes[0].iterdir())
    with pytest.raises(KeyboardInterrupt):
        AED_test.main(['--filenames', str(first), str(second), '--modelname', str(tiny_model), '--events',
                       '--out', str(tmp_path / 'ev'), '--threshold', '0.3', *map(str, DETECT)])
    out = capsys.readouterr().out
    done = tmp_path / 'ev' / (first.stem + '.selections.txt')
    assert sorted((tmp_path / 'ev').iterdir()) == [done] and f'-> {done}' in out  # whole, and only it
    assert spans(read_events(done.read_text(), 'raven')) == spans(oracle(tiny_model, first, 0.3)[0])


def test_an_events_file_that_cannot_be_written_is_an_error_and_goes_to_stdout(capsys, tiny_model, scenes,
                                                                              tmp_path):
    for folder in ('a', 'b'):
        (tmp_path / folder).mkdir()
        shutil.copy(sorted(scenes[0].iterdir())[0], tmp_path / folder / 'rec.wav')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'a').write_text('a file where the folder for a/ would go')
    status, out, err = aed_test(capsys, '--filenames', tmp_path / 'a', tmp_path / 'b', '--modelname',
                                tiny_model, '--events', '--out', tmp_path / 'out', '--events-format', 'csv')
    assert status == 1
    (line,) = err.strip().splitlines()
    assert line.startswith(f"ERROR: {tmp_path / 'a' / 'rec.wav'}: cannot write {tmp_path / 'out' / 'a'}")
    blocks = out.split('TESTING: ')
    assert re.search(r'^EVENTS: \d+\nfile,start,end,label,confidence\n', blocks[1], re.M)  # not lost
    assert f"-> {tmp_path / 'out' / 'b' / 'rec.events.csv'}" in blocks[2]


########################## thresholds: flag, tuned, config ##########################

@pytest.mark.parametrize('threshold, message', [
    (1.5, '--threshold: 1.5 is not a number between 0 and 1 (exclusive)'),
    (0, '--threshold: 0 is not a number between 0 and 1'),
    ("{'default': 0.5, 'siren': 1}", "--threshold 'siren': 1 is not a number between 0 and 1"),
    ('nan', "--threshold 'nan' is neither a number nor a dict literal"),
    ("{'siren': 0.5}", "--threshold dict needs a 'default' value")])
def test_a_threshold_outside_0_1_is_exit_2_before_the_model_loads(capsys, tiny_model, scenes, threshold,
                                                                   message):
    scene = sorted(scenes[0].iterdir())[0]
    status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', tiny_model, '--events',
                                '--threshold', threshold)
    assert status == 2 and out == '' and err.startswith(f'ERROR: {message}') and err.count('\n') == 1


def test_other_detection_settings_are_checked_first(capsys, tiny_model, monkeypatch):
    status, out, err = aed_test(capsys, '--filenames', 'x.wav', '--modelname', tiny_model, '--events',
                                '--smoothing', 4, '--min-length', -1, '--merge-gap', 'nan',
                                '--background-classes', '')
    assert status == 2 and out == ''
    assert err.splitlines() == [
        'ERROR: EVENT_SMOOTHING (--smoothing) must be odd, got 4',
        'ERROR: EVENT_MIN_LENGTH (--min-length) must be a number of at least 0, got -1.0',
        'ERROR: EVENT_MERGE_GAP (--merge-gap) must be a number of at least 0, got nan',
        "ERROR: --background-classes must be a list of names, got ['']"]
    monkeypatch.setattr(AED_test.cfg, 'EVENT_THRESHOLD', {'default': 0.5, 'siren': 1.2})
    monkeypatch.setattr(AED_test.cfg, 'EVENTS_FORMAT', 'praat')
    status, _, err = aed_test(capsys, '--filenames', 'x.wav', '--modelname', tiny_model, '--events')
    assert status == 2 and err.splitlines() == [
        "ERROR: EVENT_THRESHOLD 'siren': 1.2 is not a number between 0 and 1 (exclusive)",
        "ERROR: EVENTS_FORMAT (--events-format) must be one of 'raven', 'audacity', 'csv', 'json', "
        "got 'praat'"]
    monkeypatch.undo()
    status, _, err = aed_test(capsys, '--filenames', 'x.wav', '--modelname', tiny_model,
                              '--out', 'somewhere')
    assert status == 2 and err == 'ERROR: --out writes the events of --events: add --events\n'
    status, _, err = aed_test(capsys, '--filenames', 'x.wav', '--modelname', tiny_model, '--threshold', 0.3)
    assert status == 2 and err == 'ERROR: --threshold is for --events: add --events\n'


def test_an_unknown_class_is_exit_2_before_any_audio_is_decoded(capsys, tiny_model, scenes, monkeypatch):
    import model.stream as stream
    opened = []
    monkeypatch.setattr(stream, 'file_blocks', lambda *a, **k: opened.append(a) or iter(()))
    status, out, err = aed_test(capsys, '--filenames', sorted(scenes[0].iterdir())[0], '--modelname',
                                tiny_model, '--events', '--threshold', "{'default': 0.5, 'sirens': 0.3}")
    assert status == 2 and opened == [] and 'TESTING' not in out
    assert err == ("ERROR: --threshold for unknown class(es) sirens (the model's classes: beeps, clicks, "
                   "hum, noise_bursts, siren)\n")


def test_tuned_thresholds_are_used_without_a_flag(capsys, model_copy, scenes, tmp_path):
    # every class annotated over the whole of both scenes: the segment-based F1 of a class grows as its
    # threshold falls, so tuning lowers each threshold that a lower value makes fire more
    annotations = tmp_path / 'all'
    annotations.mkdir()
    model = load_model(model_copy, '.', 'cpu')
    for wav in scenes[0].iterdir():
        (annotations / (wav.stem + '.txt')).write_text(''.join(f'0\t12\t{c}\n' for c in model.classes))
    status, out, err = aed_eval(capsys, '--testdir', scenes[0], '--annotations', annotations,
                                '--modelname', model_copy, '--tune', '--quiet', *DETECT)
    assert status == 0, err
    sidecar = thresholds_path(model_copy)
    assert f'THRESHOLDS SAVED: {sidecar.resolve()}' in out.splitlines()
    tuned = json.loads(sidecar.read_text())
    assert tuned['detection'] == {'hop': 1.0, 'length': 3, 'smoothing': 1, 'min_length': 0.0,
                                  'merge_gap': 0.0, 'background': ['background']}
    thresholds = tuned['thresholds']
    assert f'TUNED THRESHOLDS: {thresholds}' in out.splitlines() and min(thresholds.values()) < 0.5
    scene = sorted(scenes[0].iterdir())[0]
    with_tuned, default = oracle(model_copy, scene, thresholds)[0], oracle(model_copy, scene, 0.5)[0]
    assert spans(with_tuned) != spans(default)  # else this test could not tell them apart
    status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', model_copy, '--events',
                                '--json', *DETECT)
    assert status == 0 and json_events(out) == [spans(with_tuned)]
    assert err == f'THRESHOLDS: tuned, from {sidecar.resolve()}\n'
    status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', model_copy, '--events',
                                '--json', '--threshold', 0.5, *DETECT)  # the flag wins
    assert json_events(out) == [spans(default)] and err == ''
    sidecar.write_text('{"thresholds": {"default": 0.5, "siren": 7}}')
    status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', model_copy, '--events')
    assert status == 2 and 'TESTING' not in out
    assert err == f"ERROR: {sidecar}: threshold 'siren': 7 is not a number between 0 and 1 (exclusive)\n"


def test_background_classes_from_the_checkpoint_the_flag_or_the_config(capsys, tiny_model, scenes, tmp_path):
    ckpt = torch.load(tiny_model, weights_only=True)
    torch.save({**ckpt, 'background_classes': ['beeps']}, tmp_path / 'bg.pt')  # as AED_train records them
    scene = sorted(scenes[0].iterdir())[0]
    labels = {}
    runs = {'checkpoint': (tmp_path / 'bg.pt', []), 'none': (tmp_path / 'bg.pt', ['--background-classes']),
            'flag': (tmp_path / 'bg.pt', ['--background-classes', 'clicks']), 'config': (tiny_model, [])}
    for name, (model, extra) in runs.items():
        status, out, err = aed_test(capsys, '--filenames', scene, '--modelname', model, '--events',
                                    '--json', '--threshold', 0.1, *DETECT, *extra)
        assert status == 0, err
        labels[name] = {label for _, _, label in json_events(out)[0]}
    assert {'beeps', 'clicks'} <= labels['none'] == labels['config']  # config: 'background', not a class here
    assert labels['checkpoint'] == labels['none'] - {'beeps'}
    assert labels['flag'] == labels['none'] - {'clicks'}


########################## AED_eval.py --annotations ##########################

def sed_eval_scores(annotations, events_dir, recordings, labels):
    """sed_eval itself on the annotation files and AED_test's event files (JSON lines)."""
    segment = sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=1.0)
    event = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=0.2, percentage_of_length=0.5)
    for wav in recordings:
        rows = [line.split('\t') for line in (annotations / (wav.stem + '.txt')).read_text().splitlines()]
        ref = [{'event_onset': float(a), 'event_offset': float(b), 'event_label': c} for a, b, c in rows]
        est = [{'event_onset': e.onset, 'event_offset': e.offset, 'event_label': e.label} for e in
               read_events((events_dir / (wav.stem + '.events.jsonl')).read_text(), 'json')]
        segment.evaluate(ref, est, evaluated_length_seconds=sf.info(str(wav)).duration)
        event.evaluate(ref, est)
    return {kind: (m.results_overall_metrics()['f_measure']['f_measure'],
                   m.results_overall_metrics()['error_rate']['error_rate']) for kind, m in
            (('segment', segment), ('event', event))}


def test_annotation_scores_equal_sed_eval_on_aed_tests_event_files(capsys, tiny_model, scenes, tmp_path):
    recordings, annotations = scenes
    status, out, err = aed_test(capsys, '--filenames', recordings, '--modelname', tiny_model, '--events',
                                '--events-format', 'json', '--out', tmp_path / 'ev', '--threshold', 0.3)
    assert status == 0, err
    status, out, err = aed_eval(capsys, '--testdir', recordings, '--annotations', annotations,
                                '--modelname', tiny_model, '--threshold', 0.3, '--json', tmp_path / 'r.json')
    assert status == 0, err
    labels = ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren']
    oracle_scores = sed_eval_scores(annotations, tmp_path / 'ev', sorted(recordings.iterdir()), labels)
    for kind, (f1, er) in oracle_scores.items():
        assert f'{kind.upper()}-BASED F1: {f1:.4f} ER: {er:.4f}' in out.splitlines()
    assert 0 < oracle_scores['segment'][0] < 1  # a score that tells right from wrong
    lines = out.splitlines()
    assert lines[:3] == ['NUMBER OF RECORDINGS: 2', 'IMPORTING MODEL... DONE!', 'TESTING MODEL...']
    assert re.fullmatch(r'1 scene_00_ebr-6\.wav EVENTS: \d+ ANNOTATED: \d+', lines[3])
    assert 'TESTING DONE!\nERRORS: 0 / 2\nSEGMENT-BASED F1: ' in out
    table = re.findall(r'^(\w+) +(\S+) +(\S+) +(\S+) +(\S+) +(\d+) +(\d+)$', out, re.M)
    assert [row[0] for row in table] == labels
    sweep = re.findall(r'^(0\.\d0) +([\d.na]+) +([\d.na]+) +([\d.na]+) +([\d.na]+)$', out, re.M)
    assert [float(t) for t, *_ in sweep] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert sweep[2][1:] == tuple(f'{v:.4f}' for v in (*oracle_scores['segment'], *oracle_scores['event']))
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['scores']['segment']['overall']['f1'] == pytest.approx(oracle_scores['segment'][0])
    assert len(report['sweep']) == 9 and report['summary']['thresholds'] == {'default': 0.3}
    assert [row['annotated'] for row in report['files']] == [
        len((annotations / (w.stem + '.txt')).read_text().splitlines()) for w in sorted(recordings.iterdir())]
    assert sum(int(row[5]) for row in table) == sum(row['annotated'] for row in report['files'])
    for row, wav in zip(report['files'], sorted(recordings.iterdir())):  # the events scored are AED_test's
        written = read_events((tmp_path / 'ev' / (wav.stem + '.events.jsonl')).read_text(), 'json')
        assert spans([(e['onset'], e['offset'], e['label']) for e in row['events']]) == spans(written)


def test_bad_annotations_and_recordings_are_each_one_line(capsys, tiny_model, scenes, tmp_path, monkeypatch):
    recordings, annotations = tmp_path / 'rec', tmp_path / 'ann'
    recordings.mkdir(), annotations.mkdir()
    scene = sorted(scenes[0].iterdir())[0]
    texts = {'good': (scenes[1] / (scene.stem + '.txt')).read_text(), 'empty': '',
             'late': '1\t3\tsiren\n10\t14\thum\n', 'unknown': '1\t3\tdog\n2\t4\tsiren\n',
             'malformed': '1\t3\tsiren\n2\tfour\thum\n', 'reversed': '5\t4\tsiren\n',
             'broken': '1\t2\tsiren\n'}
    for name, text in texts.items():
        shutil.copy(scene, recordings / f'{name}.wav')
        (annotations / f'{name}.txt').write_text(text)
    shutil.copy(scene, recordings / 'noann.wav')
    (recordings / 'broken.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEbroken')
    predicted = []
    real = AED_eval.predict_files
    monkeypatch.setattr(AED_eval, 'predict_files', lambda model, paths, *a: predicted.extend(paths) or
                        real(model, paths, *a))
    status, out, err = aed_eval(capsys, '--testdir', recordings, '--annotations', annotations,
                                '--modelname', tiny_model, '--json', tmp_path / 'r.json')
    assert status == 1
    assert 'NUMBER OF RECORDINGS: 8' in out and 'ERRORS: 4 / 8' in out and 'UNKNOWN CLASSES: dog' in out
    problems = err.strip().splitlines()
    assert len(problems) == 5
    assert problems[0] == (f"ERROR: {recordings / 'malformed.wav'}: {annotations / 'malformed.txt'} line 2: "
                           f"expected onset, offset and label: '2\\tfour\\thum'")
    assert problems[1].startswith(f"ERROR: {recordings / 'noann.wav'}: no annotation file for it in")
    assert problems[2] == (f"ERROR: {recordings / 'reversed.wav'}: {annotations / 'reversed.txt'} line 1: "
                           f"onset 5 must be >= 0 and before offset 4")
    assert problems[3].startswith(f"ERROR: {recordings / 'broken.wav'}: ")
    assert problems[4] == (f"WARNING: {annotations / 'late.txt'} line 2: event 10-14 s (hum) ends past the "
                           f"recording, clipped to its end at 12 s")
    # bad annotations are known before decoding: those recordings are never predicted
    assert sorted(p.stem for p in predicted) == ['broken', 'empty', 'good', 'late', 'unknown']
    report = json.loads((tmp_path / 'r.json').read_text())
    rows = {row['path'].rsplit('/', 1)[1]: row for row in report['files']}
    assert report['summary']['scored'] == 4 and report['summary']['unknown_classes'] == ['dog']
    assert (rows['empty.wav']['annotated'], rows['late.wav']['annotated']) == (0, 2)
    assert all(rows[f'{name}.wav']['error'] for name in ('malformed', 'noann', 'reversed', 'broken'))
    dog = re.search(r'^dog +(\S+) +(\S+) +(\S+) +(\S+) +(\d+) +(\d+)$', out, re.M).groups()
    assert dog == ('nan', '1.0000', 'nan', '1.0000', '1', '0')  # unknown to the model: only missed


def test_a_folder_without_usable_annotations_is_exit_2(capsys, tiny_model, scenes, tmp_path):
    status, out, err = aed_eval(capsys, '--testdir', scenes[0], '--annotations', tmp_path,
                                '--modelname', tiny_model)
    assert status == 2 and 'IMPORTING MODEL' not in out
    assert err.splitlines()[-1] == \
        f'ERROR: {scenes[0]} has no recording with a usable annotation file in {tmp_path}'
    status, out, err = aed_eval(capsys, '--testdir', scenes[0].parent, '--annotations', scenes[1],
                                '--modelname', tiny_model)  # class-folder layout: no recordings at the top
    assert status == 2 and 'not of class sub-folders' in err
    status, out, err = aed_eval(capsys, '--testdir', scenes[0], '--annotations', scenes[1], '--modelname',
                                tiny_model, '--threshold', 1, '--segment', 0, '--ignore-background')
    assert status == 2 and out == '' and err.splitlines() == [
        'ERROR: SEGMENT_LENGTH (--segment) must be a number of at least 0.01, got 0.0',
        'ERROR: --ignore-background is for class folders, not --annotations',
        'ERROR: --threshold: 1 is not a number between 0 and 1 (exclusive)']
    status, out, err = aed_eval(capsys, '--testdir', scenes[0], '--modelname', tiny_model, '--tune')
    assert status == 2 and err == 'ERROR: --tune needs --annotations DIR (annotated recordings)\n'


def test_ignore_background_leaves_its_files_out_of_map_and_accuracy(capsys, tiny_model, demo_data, tmp_path):
    argv = ['--testdir', demo_data / 'test', '--modelname', tiny_model, '--quiet', '--confmatrix', '']
    status, out, _ = aed_eval(capsys, *argv, '--json', tmp_path / 'all.json')
    assert status == 0 and 'BACKGROUND' not in out
    status, out, _ = aed_eval(capsys, *argv, '--ignore-background', '--background-classes', 'hum',
                              '--json', tmp_path / 'r.json')
    assert status == 0 and 'BACKGROUND FILES LEFT OUT OF MAP AND ACCURACY: 2 (hum)\n' in out
    report = json.loads((tmp_path / 'r.json').read_text())
    kept = [f for f in report['files'] if f['true_label'] != 'hum']
    assert report['summary']['map'] == pytest.approx(np.mean([f['ap'] for f in kept]))
    assert report['summary']['accuracy'] == pytest.approx(np.mean([f['rank'] == 1 for f in kept]))
    assert report['summary']['background_left_out'] == 2 and len(report['files']) == 10
    every = json.loads((tmp_path / 'all.json').read_text())['summary']
    assert every['map'] == pytest.approx(np.mean([f['ap'] for f in report['files']]))


def test_results_carry_the_recordings_exact_sample_count(tiny_model, tmp_path):
    from model.inference import predict_files
    files = [tone(tmp_path / 'a.wav', 9.8), tone(tmp_path / 'b.wav', 9.8, rate=22050),
             tone(tmp_path / 'c.wav', 0.4, rate=8000)]
    model = load_model(tiny_model, '.', 'cpu')
    settings = {'length': 3, 'overlap': 0, 'sample_rate': 44100, 'resample': 'linear'}
    results = list(predict_files(model, files, settings))
    assert [r['samples'] for r in results] == [432180, int(216090 * 44100 / 22050), int(3200 * 44100 / 8000)]
    assert [r['bounds'][-1][1] for r in results] == [396900, 396900, 17640]  # at 9 s, not 9.8 s
