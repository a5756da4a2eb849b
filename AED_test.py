"""Predict the sound events in audio files with a trained model.

    python AED_test.py --filenames dataset/examples/siren_example.wav --modelname AED_Demo_model_best.pt
    python AED_test.py --filenames "['a.wav', 'b.wav']" --results 3 --confidence 0.05
    python AED_test.py --filenames recordings/ --modelname my_model.pt --events --out events/
"""
import argparse
import ast
import glob
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from model import config_checks as check
from model.audio import AUDIO_EXTENSIONS, spec_defaults
from model.events import (SUFFIXES, detect_events, events_text, load_thresholds, output_path,
                          parse_thresholds, thresholds_path, write_atomic)

try:
    import config as cfg
except Exception as e:  # noqa: BLE001 -- the user's config.py: any error in it is one ERROR line
    check.config_failed(e)

ROOT = Path(__file__).resolve().parent
# A file with more windows than this gets a progress bar (on a terminal, without --json)
PROGRESS_MIN_WINDOWS = 300


def prediction_flags(p, threads):
    """The flags AED_eval.py shares: the model, its windows and how it runs (threads: a default)."""
    p.add_argument('--modelname', default=cfg.TRAINED_MODEL,
                   help=f'checkpoint path, or file name under {cfg.MODEL_PATH}')
    p.add_argument('--speclength', type=int, default=None,
                   help=f"window length in seconds (None = the model's, else {cfg.SPEC_LENGTH})")
    p.add_argument('--overlap', type=float, default=None,
                   help=f"window overlap in seconds (None = the model's, else {cfg.SPEC_OVERLAP})")
    p.add_argument('--batch-size', type=int, default=None,
                   help=f'windows per network batch, filled across files (None = {cfg.INFER_BATCH_SIZE} '
                        f'on CUDA, else {cfg.INFER_BATCH_SIZE_CPU})')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=cfg.INFER_COMPILE,
                   help='torch.compile the network first (20 s and more); pays off on a GPU and on long runs')
    p.add_argument('--device', default=cfg.DEVICE, help="'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'")
    p.add_argument('--threads', type=int, default=threads,
                   help='CPU threads for the network (0 = 1 for a small model, else every core; '
                        'OMP_NUM_THREADS, when set, is kept)')


def prediction_checks(args, torchrun=False):
    """Checks of what prediction_flags and model.session use: [one-line problem or None]."""
    return [
        check.model_file('TRAINED_MODEL (--modelname)', args.modelname, 'MODEL_PATH', ROOT / cfg.MODEL_PATH),
        check.spec_window('SPEC_LENGTH', cfg.SPEC_LENGTH, 'SPEC_OVERLAP', cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE),
        check.spec_window('--speclength', args.speclength, '--overlap', args.overlap, cfg.SAMPLE_RATE),
        check.whole('SAMPLE_RATE', cfg.SAMPLE_RATE, 1),
        check.one_of('RESAMPLE_METHOD', cfg.RESAMPLE_METHOD, check.RESAMPLE_METHODS),
        check.whole('INFER_BATCH_SIZE', cfg.INFER_BATCH_SIZE, 1),
        check.whole('INFER_BATCH_SIZE_CPU', cfg.INFER_BATCH_SIZE_CPU, 1),
        args.batch_size is not None and check.whole('--batch-size', args.batch_size, 1),
        check.flag('INFER_COMPILE (--compile)', args.compile),
        check.device('DEVICE (--device)', args.device, torchrun)]


def event_flags(p):
    """The detection flags AED_eval.py shares: its --annotations scores the events they give."""
    p.add_argument('--threshold', default=None, metavar='T',
                   help="a class's probability that makes an event: a number, or a dict such as "
                        "\"{'default': 0.5, 'siren': 0.3}\" (None = the thresholds AED_eval.py --tune "
                        f"saved beside the model, else EVENT_THRESHOLD = {cfg.EVENT_THRESHOLD})")
    p.add_argument('--smoothing', type=int, default=cfg.EVENT_SMOOTHING,
                   help='median filter over this many windows (odd; 1 = off)')
    p.add_argument('--min-length', type=float, default=cfg.EVENT_MIN_LENGTH,
                   help='drop events shorter than this (seconds)')
    p.add_argument('--merge-gap', type=float, default=cfg.EVENT_MERGE_GAP,
                   help='merge events of a class at most this far apart (seconds)')
    p.add_argument('--background-classes', nargs='*', default=None, metavar='NAME',
                   help="classes never reported or scored as events (None = the model's, else "
                        f"BACKGROUND_CLASSES = {cfg.BACKGROUND_CLASSES})")


def threshold_problem(label, value, classes=None):
    """Why value is no threshold (for these classes), in a line that starts with label; or None."""
    try:
        parse_thresholds(value, classes)
    except ValueError as e:  # each message starts with the word 'threshold'
        return label + str(e).removeprefix('threshold')
    return None


def event_checks(args):
    """Checks of the detection settings, before torch is imported: [one-line problem or None]."""
    background = args.background_classes
    return [
        threshold_problem('EVENT_THRESHOLD', cfg.EVENT_THRESHOLD),
        args.threshold is not None and threshold_problem('--threshold', args.threshold),
        check.whole('EVENT_SMOOTHING (--smoothing)', args.smoothing, 1)
        or (args.smoothing % 2 == 0 and f'EVENT_SMOOTHING (--smoothing) must be odd, got {args.smoothing}'),
        check.number('EVENT_MIN_LENGTH (--min-length)', args.min_length, 0),
        check.number('EVENT_MERGE_GAP (--merge-gap)', args.merge_gap, 0),
        check.names('BACKGROUND_CLASSES', cfg.BACKGROUND_CLASSES),
        background is not None and check.names('--background-classes', background)]


def parse_args(argv):  # port of AED_test.parse_args
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--filenames', nargs='+', required=True, metavar='PATH', default=argparse.SUPPRESS,
                   help="audio files, folders, quoted glob patterns or a list like \"['a.wav', 'b.wav']\"")
    prediction_flags(p, cfg.TEST_THREADS)
    p.add_argument('--results', type=int, default=cfg.NUM_RESULTS,
                   help="ranked results PRINTED per file (AED_eval's --results: how many it keeps for AP)")
    p.add_argument('--confidence', type=float, default=cfg.MIN_CONFIDENCE,
                   help='hide results below this confidence')
    p.add_argument('--timeline', action='store_true',
                   help="also list every window's start and end second and its top class")
    p.add_argument('--events', action='store_true',
                   help="detect events: each class's own probability per window against --threshold")
    event_flags(p)
    p.add_argument('--events-format', default=cfg.EVENTS_FORMAT, choices=list(SUFFIXES),
                   help='table of the events: Raven Pro selections, Audacity labels, CSV or JSON lines')
    p.add_argument('--out', type=Path, default=None, metavar='DIR',
                   help='write each file\'s events to DIR/<name>.selections.txt (.labels.txt, .events.csv, '
                        '.events.jsonl) as it finishes, instead of to stdout')
    p.add_argument('--json', action='store_true',
                   help='print one JSON object per file and line on stdout, nothing else')
    p.add_argument('--timing', action='store_true',
                   help='print import, model-load and prediction times on stderr')
    return p.parse_args(argv)


def check_config(args):
    """Every setting this run uses, checked before torch is imported: [one-line problem or None]."""
    out = args.out
    return prediction_checks(args) + (event_checks(args) if args.events else []) + [
        check.whole('NUM_RESULTS (--results)', args.results, 1),
        check.fraction('MIN_CONFIDENCE (--confidence)', args.confidence),
        check.whole('TEST_THREADS (--threads)', args.threads, 0),
        check.one_of('EVENTS_FORMAT (--events-format)', args.events_format, tuple(SUFFIXES)),
        out is not None and not args.events and '--out writes the events of --events: add --events',
        args.threshold is not None and not args.events and '--threshold is for --events: add --events',
        out is not None and out.exists() and not out.is_dir() and f'--out: {out} is a file; give a folder']


def expand_filenames(args):
    """Turn the --filenames arguments into [(path, error or None)] in the order given."""
    out = []
    for arg in args:
        try:  # the original's "['a.wav', 'b.wav']" (defect 8), read as literals: never runs code
            listed = ast.literal_eval(arg)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            listed = None  # a path, or a glob pattern like [ab]*.wav
        if isinstance(listed, (list, tuple)) and all(isinstance(v, str) for v in listed):
            out += expand_filenames(listed)
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                           and not any(part.startswith('.') for part in p.relative_to(path).parts))
            out += [(str(f), None) for f in files] or [(arg, 'folder has no audio files')]
        elif path.exists():
            out.append((arg, None))
        elif any(c in arg for c in '*?['):  # a pattern the shell did not expand
            matches = sorted(m for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            out += [(m, None) for m in matches] or [(arg, 'no file matches this pattern')]
        else:
            out.append((arg, 'no such file'))
    return out


def progress(enabled):
    """A watch for predict_files: a tqdm bar on stderr for each file of many windows."""
    from tqdm import tqdm
    bars = {}

    def watch(item):
        if enabled and item.get('windows', 0) > PROGRESS_MIN_WINDOWS:  # not on error items
            if item['order'] not in bars:
                bars[item['order']] = tqdm(total=item['windows'], unit='window', leave=False,
                                           desc=Path(item['path']).name, file=sys.stderr)
            bars[item['order']].update(len(item['bounds']))
        if item['last'] and item['order'] in bars:
            bars.pop(item['order']).close()
    return watch


def background_classes(args, model):
    """--background-classes, else the checkpoint's (AED_train.py records them), else BACKGROUND_CLASSES."""
    for names in (args.background_classes, model.meta.get('background_classes'), cfg.BACKGROUND_CLASSES):
        if names is not None:
            return list(names)


def detection_setup(args, model, settings):
    """(thresholds, detect_events' other arguments) for this model. Thresholds: --threshold, else those
    AED_eval.py --tune saved beside the model (said on stderr), else EVENT_THRESHOLD; exit 2 if unusable."""
    rate = settings['sample_rate']
    params = {'classes': model.classes, 'hop': int((settings['length'] - settings['overlap']) * rate) / rate,
              'length': settings['length'], 'smoothing': args.smoothing, 'min_length': args.min_length,
              'merge_gap': args.merge_gap, 'background': background_classes(args, model)}
    tuned = thresholds_path(model.path)
    if args.threshold is None:
        try:
            thresholds = load_thresholds(tuned, model.classes)
        except ValueError as e:  # a tuned-thresholds file that does not parse (the message names it)
            check.exit_on([str(e)])
        if thresholds is not None:
            print(f'THRESHOLDS: tuned, from {tuned.resolve()}', file=sys.stderr)
            return thresholds, params
    label, value = ('EVENT_THRESHOLD', cfg.EVENT_THRESHOLD) if args.threshold is None else \
        ('--threshold', args.threshold)
    check.exit_on([threshold_problem(label, value, model.classes)])  # a class the model does not have
    return parse_thresholds(value, model.classes), params


def windows_of(result, rate):
    """A prediction result as detect_events takes it: probs (W, C), window starts and duration (s)."""
    return {'probs': result['probs'], 'starts': np.array([a for a, _ in result['bounds']]) / rate,
            'duration': result['samples'] / rate}


def event_paths(paths, fmt, out_dir):
    """{recording: its --out file}: sub-folders kept below the recordings' common folder, and the
    extension kept where two names would collide (rec.wav, rec.flac)."""
    if not paths:
        return {}
    root = os.path.commonpath([Path(p).resolve().parent for p in paths])
    found = {p: output_path(Path(p).resolve(), fmt, out_dir, root) for p in paths}
    taken = Counter(found.values())
    return {p: t.with_name(Path(p).name + SUFFIXES[fmt]) if taken[t] > 1 else t for p, t in found.items()}


def event_detector(args, model, settings, paths):
    """detect(path, result) -> (the file's events, the --out file they went to or None, why they
    could not be written or None)."""
    thresholds, params = detection_setup(args, model, settings)
    targets = event_paths(paths, args.events_format, args.out) if args.out else {}
    rate = settings['sample_rate']

    def detect(path, result):
        events = detect_events(**windows_of(result, rate), thresholds=thresholds, **params)
        if path not in targets:
            return events, None, None
        try:  # written as each file finishes: an interrupted run keeps the finished files
            write_atomic(targets[path], events_text(events, args.events_format, path, rate / 2))
        except OSError as e:
            return events, None, f'cannot write {targets[path]}: {e.strerror or e}'
        return events, targets[path].resolve(), None
    return detect


def print_result(args, path, result, model, rate, events=None, written=None):
    """The original's lines for one file (or its JSON object): top predictions and timing; then its
    events, or where they were written."""
    from model.inference import prediction_pooling, rank_predictions
    probs, seconds = result['probs'], result['seconds']
    ranked = rank_predictions(prediction_pooling(probs), model.classes, args.confidence, args.results)
    if args.timeline:  # each window's start and end second, top class and confidence
        windows = [(a / rate, b / rate, model.classes[k], float(p[k]))
                   for (a, b), p, k in zip(result['bounds'], probs, probs.argmax(axis=1))]
    if result['constant']:
        print(f"WARNING: {path}: {len(result['constant'])} silent window(s)", file=sys.stderr)
    if args.json:
        record = {'file': path, 'sample_rate': result['source_rate'],
                  'predictions': [{'label': label, 'confidence': round(conf, 6)} for label, conf in ranked],
                  'specs': len(probs), 'ms': round(seconds * 1000, 1)}
        if args.timeline:
            record['timeline'] = [{'start': round(a, 3), 'end': round(b, 3), 'label': label,
                                   'confidence': round(conf, 6)} for a, b, label, conf in windows]
        if events is not None:
            record['events'] = [{'start': round(ev.onset, 3), 'end': round(ev.offset, 3), 'label': ev.label,
                                 'confidence': round(ev.confidence, 4)} for ev in events]
            record.update({'events_file': str(written)} if written else {})
        print(json.dumps(record), flush=True)
        return
    print('SAMPLE RATE:', result['source_rate'], 'TOP PREDICTION(S):')
    for label, conf in ranked:
        print(f'\t{label} {int(conf * 100)} %')
    if args.timeline:
        print('TIMELINE:')
        for a, b, label, conf in windows:
            print(f'\t{a:.2f}-{b:.2f} s {label} {int(conf * 100)} %')
    print(f'PREDICTION FOR {len(probs)} SPECS TOOK {int(seconds * 1000)} ms '
          f'( {int(seconds / len(probs) * 1000)} ms/spec )')
    if events is not None:
        print(f'EVENTS: {len(events)}' + (f' -> {written}' if written else ''))
        print('' if written else events_text(events, args.events_format, path, rate / 2), end='')
    print(flush=True)


def main(argv=None):  # port of AED_test's main block and testFile
    t_start = time.perf_counter()
    args = parse_args(argv)
    check.exit_on(check_config(args))
    # torch takes seconds to import: flags are checked first so -h and typos answer at once
    from model.inference import predict_files
    from model.session import open_for_prediction
    t_imported = time.perf_counter()
    files = expand_filenames(args.filenames)
    readable = [path for path, error in files if error is None]
    model, settings, batch_size, workers = open_for_prediction(
        args, ROOT / cfg.MODEL_PATH, spec_defaults(cfg.SPEC_LENGTH, cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE,
                                                   cfg.RESAMPLE_METHOD),
        (cfg.INFER_BATCH_SIZE, cfg.INFER_BATCH_SIZE_CPU), readable, quiet=args.json)
    detect = event_detector(args, model, settings, readable) if args.events else None
    t_loaded = time.perf_counter()
    results = predict_files(model, readable, settings, batch_size, workers,
                            watch=progress(sys.stderr.isatty() and not args.json))
    failed = 0
    for path, error in files:
        if not args.json:
            print('TESTING:', path)
        result = next(results) if error is None else {'error': error}  # in the order given
        if result['error'] is None:
            events, written, unwritten = detect(path, result) if detect else (None, None, None)
            print_result(args, path, result, model, settings['sample_rate'], events, written)
            if unwritten:  # the events went to stdout instead
                failed += 1
                print(f'ERROR: {path}: {unwritten}', file=sys.stderr)
            continue
        failed += 1
        print(f"ERROR: {path}: {result['error']}", file=sys.stderr)
        print(json.dumps({'file': path, 'error': result['error']}) if args.json else '', flush=True)
    if args.timing:
        end = time.perf_counter()
        print(f'TIMING: imports {(t_imported - t_start) * 1000:.0f} ms, model load '
              f'{(t_loaded - t_imported) * 1000:.0f} ms, files {(end - t_loaded) * 1000:.0f} ms, '
              f'main total {(end - t_start) * 1000:.0f} ms', file=sys.stderr)
    if failed:
        sys.exit(1)
    return 0


if __name__ == '__main__':
    main()
