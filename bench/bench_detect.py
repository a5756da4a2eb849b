"""Event-detection scores of trained models on annotated scenes: one table row per setting (issue 15).

Each model predicts every scene once per --overlaps value (window probabilities,
as AED_test.py computes them); then model.events.detect_events finds the events
for every combination of --decoding, --thresholds, --smoothing, --min-length and
--merge-gap, and model.sed.evaluate scores them (segment-based F1/ER over 1 s,
event-based F1/ER with a 200 ms onset collar). --tune-on adds rows whose per-class
thresholds model.sed.tune_thresholds picked on other scenes. Checkpoints joined by
commas (seeds of one setting) give the mean and the range of their scores.

Decodings: 'centre' is model.events.place (hop-centred); 'bounds' places a run of
windows i..j at onset = end of window i - hop/2, offset = start of window j + hop/2
(every window that fires overlaps the event); 'cover:C' assumes a window fires once
C seconds of the event are in it (bounds is C = 0, centre C = length/2). It shortens
every event by length - 2C, so below length/2 it also drops runs too short for that.

    python -m bench.bench_detect --models model/AED_Demo_model_best.pt --scenes dataset/scenes
    python -m bench.bench_detect --models mixed=a_s1.pt,a_s2.pt plain=b_s1.pt,b_s2.pt \
        --scenes dataset/scenes held/scenes --overlaps 2 2.5 --decoding centre bounds
    python -m bench.bench_detect --models a.pt --scenes held/scenes --tune-on dataset/scenes --smoothing 1 3
"""
import argparse
import itertools
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model import events  # noqa: E402
from model.sed import evaluate, find_annotation, label_list, read_annotations, tune_thresholds  # noqa: E402


def cover_place(coverage):
    """A model.events.place twin: a window fires once `coverage` s of the event are in it.

    A run i..j then bounds the onset to (end_i - coverage - hop, end_i - coverage] and the
    offset to [start_j + coverage, start_j + coverage + hop); each is placed at the middle.
    A run too short for that (onset after offset) keeps the two swapped. The first window's
    onset is 0 and the last's offset the duration, as in place.
    """
    def place(first, last, starts, hop, length, duration):
        starts = np.asarray(starts, dtype=np.float64)
        onsets = np.minimum(starts + length, duration)[first] - coverage - hop / 2
        offsets = starts[last] + coverage + hop / 2
        onsets, offsets = np.minimum(onsets, offsets), np.maximum(onsets, offsets)
        onsets[first == 0] = 0.0
        offsets[last == len(starts) - 1] = duration
        return np.clip(onsets, 0.0, duration), np.clip(offsets, 0.0, duration)
    return place


@contextmanager
def decoding(name, length):
    """detect_events with the placement `name` while inside."""
    coverage = {'centre': None, 'bounds': 0.0}.get(name)
    if name.startswith('cover:'):
        coverage = float(name.split(':')[1])
    original = events.place
    if coverage is not None and coverage != length / 2:
        events.place = cover_place(coverage)
    try:
        yield
    finally:
        events.place = original


def scene_probs(model, folders, overlap):
    """{recording: {'probs', 'starts', 'duration'}}, {recording: [Event]} and the spectrogram settings
    of the scenes in folders (each with wav/ and annotations/)."""
    from model.inference import predict_files
    from model.session import spec_settings
    settings = spec_settings(model.spec, overlap=overlap)
    recordings, references = {}, {}
    for folder in folders:
        paths = sorted(str(p) for p in (Path(folder) / 'wav').glob('*.wav'))
        for result in predict_files(model, paths, settings, batch_size=64):
            path, rate = result['path'], settings['sample_rate']
            duration = sf.info(path).duration
            recordings[path] = {'probs': result['probs'], 'duration': duration,
                                'starts': np.array([a for a, _ in result['bounds']]) / rate}
            references[path] = read_annotations(find_annotation(path, Path(folder) / 'annotations'),
                                                duration)[0]
    return recordings, references, settings


def score(recordings, references, labels, thresholds, params):
    found = {rec: events.detect_events(r['probs'], r['starts'], r['duration'], thresholds=thresholds,
                                       **params) for rec, r in recordings.items()}
    durations = {rec: r['duration'] for rec, r in recordings.items()}
    result = evaluate(references, found, durations, labels)
    return [result[kind]['overall'][key] for kind in ('segment', 'event') for key in ('f1', 'error_rate')]


def model_rows(args, path, name):
    """Table rows of one model: (name, overlap, decoding, threshold, smoothing, min length, gap, 4 scores)."""
    from model.session import load_model
    model = load_model(path, '.', args.device)
    background = [c for c in model.classes if c in args.background]
    rows = []
    for overlap in args.overlaps:
        recordings, references, settings = scene_probs(model, args.scenes, overlap)
        tune_set = scene_probs(model, args.tune_on, overlap)[:2] if args.tune_on else None
        labels = label_list(model.classes, background, references)[0]
        hop = settings['length'] - settings['overlap']
        for dec, smoothing, min_length, gap in itertools.product(args.decoding, args.smoothing,
                                                                 args.min_length, args.merge_gap):
            params = {'classes': model.classes, 'hop': hop, 'length': settings['length'],
                      'smoothing': smoothing, 'min_length': min_length, 'merge_gap': gap,
                      'background': background}
            with decoding(dec, settings['length']):
                thresholds = [(t, t) for t in args.thresholds]
                if tune_set:
                    tuned = tune_thresholds(*tune_set, label_list(model.classes, background, tune_set[1])[0],
                                            params)[0]
                    thresholds.append(('tuned', tuned))
                for label, t in thresholds:
                    rows.append((name, overlap, dec, label, smoothing, min_length, gap,
                                 *score(recordings, references, labels, t, params)))
    return rows


def print_group(rows):
    """One line per setting: the scores, or over several models (seeds) their mean (min-max)."""
    settings = {}
    for row in rows:
        settings.setdefault(row[:7], []).append(row[7:])
    for setting, scores in settings.items():
        scores = np.array(scores, dtype=float)
        cells = [f'{m:.3f}' if len(scores) == 1 else f'{m:.3f} ({lo:.2f}-{hi:.2f})'
                 for m, lo, hi in zip(scores.mean(0), scores.min(0), scores.max(0))]
        line = [*map(str, setting), str(len(scores)), *cells]
        print('| ' + ' | '.join(line) + ' |', flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', required=True, metavar='[NAME=]A.pt[,B.pt...]',
                   help='checkpoints; several joined by commas (e.g. seeds) give mean (min-max) rows')
    p.add_argument('--scenes', nargs='+', required=True,
                   help='folders with wav/ and annotations/ (make_demo.py scenes), scored together')
    p.add_argument('--tune-on', nargs='+', default=None,
                   help='other scene folders to tune per-class thresholds on')
    p.add_argument('--overlaps', type=float, nargs='+', default=[2.0], help='window overlaps (s)')
    p.add_argument('--decoding', nargs='+', default=['centre'], help="'centre', 'bounds' or 'cover:C'")
    p.add_argument('--thresholds', type=float, nargs='+', default=[0.5])
    p.add_argument('--smoothing', type=int, nargs='+', default=[1])
    p.add_argument('--min-length', type=float, nargs='+', default=[0.0])
    p.add_argument('--merge-gap', type=float, nargs='+', default=[0.0])
    p.add_argument('--background', nargs='+', default=['background'], help='background classes')
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    print('| model | overlap | decoding | threshold | smoothing | min length | merge gap | n '
          '| segment F1 | segment ER | event F1 | event ER |')
    print('|' + '---|' * 8 + '---:|' * 4)
    for group in args.models:
        name, _, paths = group.rpartition('=')
        paths = paths.split(',')
        print_group([row for path in paths for row in model_rows(args, path, name or Path(paths[0]).stem)])


if __name__ == '__main__':
    main()
