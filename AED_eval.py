"""Evaluate a trained model on class folders (MAP, accuracy), or its events against annotations.

    python AED_eval.py --testdir dataset/test --quiet --csv results.csv --json results.json
    torchrun --nproc_per_node 4 AED_eval.py --testdir big_test_set --quiet
    python AED_eval.py --testdir dataset/scenes/wav --annotations dataset/scenes/annotations --tune
"""
import argparse
import csv
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from AED_test import (background_classes, detection_setup, event_checks, event_flags, prediction_checks,
                      prediction_flags, windows_of)
from model import config_checks as check
from model.audio import AUDIO_EXTENSIONS, class_folders, spec_defaults
from model.events import detect_events, save_thresholds, thresholds_path
from model.inference import predict_files, prediction_pooling, rank_predictions
from model.metrics import class_metrics, confusion_matrix, plot_confusion_matrix
from model.sed import (AnnotationError, detect_all, evaluate as sed_scores, find_annotation, label_list,
                       read_annotations, threshold_sweep, tune_thresholds)
from model.session import open_for_prediction
from model.training import distributed_env

try:
    import config as cfg
except Exception as e:  # noqa: BLE001 -- the user's config.py: any error in it is one ERROR line
    check.config_failed(e)

ROOT = Path(__file__).resolve().parent
# How long a torchrun process that has finished its share waits for the slowest one
GATHER_TIMEOUT = timedelta(hours=24)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--testdir', type=Path, default=ROOT / cfg.TEST_DIR,
                   help='folder with one sub-folder of audio files per class (with --annotations: '
                        'a folder of recordings)')
    p.add_argument('--annotations', type=Path, default=None, metavar='DIR',
                   help='score events against the annotation file of each recording, named after it, '
                        'in DIR (DCASE onset<TAB>offset<TAB>label lines, or a Raven selection table)')
    p.add_argument('--segment', type=float, default=cfg.SEGMENT_LENGTH,
                   help='segment length (seconds) of the segment-based scores')
    p.add_argument('--tune', action='store_true',
                   help='with --annotations: per-class thresholds that maximise segment-based F1, '
                        'saved beside the model, where AED_test.py --events finds them')
    p.add_argument('--ignore-background', action='store_true',
                   help='leave the files of background classes out of MAP and ACCURACY')
    event_flags(p)
    prediction_flags(p, cfg.EVAL_THREADS)
    p.add_argument('--results', type=int, default=cfg.MAX_PREDICTIONS,
                   help='ranked predictions KEPT per file for AP: a true class ranked lower '
                        "scores 0 (AED_test's --results is how many it PRINTS)")
    p.add_argument('--confidence', type=float, default=cfg.CONFIDENCE_THRESHOLD,
                   help="the JSON report's per-file prediction lists leave out lower "
                        'confidences; AP and MAP do not depend on it')
    p.add_argument('--workers', type=int, default=cfg.EVAL_WORKERS,
                   help='processes decoding files ahead of the network (0 = CPU cores - 1)')
    p.add_argument('--confmatrix', default=None,
                   help="confusion-matrix PNG ({model} = checkpoint file stem; '' = none; None = next to "
                        f"--json or --csv when given, else {ROOT / cfg.EVAL_CONFMATRIX})")
    p.add_argument('--json', type=Path, default=None, metavar='FILE',
                   help='write summary, per-class and per-file results as JSON')
    p.add_argument('--csv', type=Path, default=None, metavar='FILE', help='write one row per file as CSV')
    p.add_argument('--quiet', action='store_true', help='a progress bar instead of the per-file lines')
    args = p.parse_args(argv)
    report, name = args.json or args.csv, cfg.EVAL_CONFMATRIX  # typed paths are relative to the cwd
    if args.confmatrix is None and name:  # by default next to the reports, else in the repository
        args.confmatrix = report.parent / Path(name).name if report else ROOT / name
    return args


def check_config(args, ddp):
    """Every setting this run uses, checked before any work: [one-line problem or None]."""
    if args.annotations:
        mode = [check.folder('--annotations', args.annotations),
                check.number('SEGMENT_LENGTH (--segment)', args.segment, 0.01),
                args.ignore_background and '--ignore-background is for class folders, not --annotations',
                *event_checks(args)]
    else:
        mode = [args.tune and '--tune needs --annotations DIR (annotated recordings)']
    return [check.folder('TEST_DIR (--testdir)', args.testdir), *prediction_checks(args, bool(ddp)), *mode,
            check.whole('MAX_PREDICTIONS (--results)', args.results, 1),
            check.fraction('CONFIDENCE_THRESHOLD (--confidence)', args.confidence),
            check.whole('EVAL_WORKERS (--workers)', args.workers, 0),
            check.whole('EVAL_THREADS (--threads)', args.threads, 0),
            check.output_file('EVAL_CONFMATRIX (--confmatrix)', args.confmatrix, check.PLOT_SUFFIXES),
            check.flag('NORMALIZE_CONFMATRIX', cfg.NORMALIZE_CONFMATRIX),
            check.whole('CONFMATRIX_MAX_CLASSES', cfg.CONFMATRIX_MAX_CLASSES, 1),
            check.output_file('--json', args.json),
            check.output_file('--csv', args.csv)]


def list_test_files(test_dir):  # port of AED_eval.parseTestSet
    """[(path, true label)] from the class sub-folders (stray files warned about); exit 2 if there is none."""
    folders, messages = class_folders(test_dir)
    files = [(p, class_dir.name) for class_dir, found in folders for p in found]
    for msg in messages:
        print(msg, file=sys.stderr)
    check.exit_on([not files and f'{test_dir} has no test files in class sub-folders'])
    print('NUMBER OF CLASSES:', len({label for _, label in files}))
    print('NUMBER OF TEST SAMPLES:', len(files))
    return files


def list_recordings(recording_dir, annotation_dir):
    """[(recording, its annotation file, None) or (recording, None, why it cannot be scored)] for
    --annotations; the annotations are read now, so a bad one is known before any decoding."""
    files = []
    for rec in sorted(p for p in recording_dir.iterdir() if p.is_file() and not p.name.startswith('.')
                      and p.suffix.lower() in AUDIO_EXTENSIONS):
        try:
            annotation = find_annotation(rec, annotation_dir)
            read_annotations(annotation)
            files.append((rec, annotation, None))
        except AnnotationError as e:
            print(f'ERROR: {rec}: {e}', file=sys.stderr)
            files.append((rec, None, str(e)))
    if not any(error is None for *_, error in files):
        check.exit_on([f'{recording_dir} has no recording with a usable annotation file in {annotation_dir}'
                       + ('' if files else ' (no audio files: --testdir is a folder of recordings, not of '
                          'class sub-folders)')])
    print('NUMBER OF RECORDINGS:', len(files))
    return files


def check_classes(model, files):
    """Test classes the model does not know; exit 2 when it knows none of them."""
    test_classes = sorted({label for _, label in files})
    unknown = [c for c in test_classes if c not in model.classes]
    if len(unknown) == len(test_classes):
        check.exit_on([f'the model knows none of the test classes: model classes '
                       f'{", ".join(model.classes)}; test folder classes {", ".join(test_classes)}'])
    for label in unknown:
        print(f"WARNING: test class '{label}' is unknown to the model; its files score as misses",
              file=sys.stderr)
    return unknown


def score(probs, classes, label, threshold, max_predictions):
    """One file's row of the report. AP ranks every class whatever its confidence (the original
    never applied CONFIDENCE_THRESHOLD here); threshold only trims the listed 'predictions'."""
    ranked = rank_predictions(prediction_pooling(probs), classes, 0.0, max_predictions)
    rank = next((n for n, (name, _) in enumerate(ranked, 1) if name == label), None)  # 1-based
    return {'top_label': ranked[0][0], 'confidence': ranked[0][1], 'rank': rank,
            'ap': 1 / rank if rank else 0.0,  # defect 7: 0 below the top, so the file stays in MAP
            'predictions': [{'label': name, 'confidence': round(conf, 6)}
                            for name, conf in ranked if conf >= threshold]}


def predict_sharded(model, paths, settings, batch_size, workers, ddp):
    """Every file's result, in order; under torchrun each rank predicts a contiguous share
    and rank 0 yields its own results, then the others' (gathered), the other ranks none."""
    if not ddp:
        yield from predict_files(model, paths, settings, batch_size, workers)
        return
    rank, world, _ = ddp
    lo, hi = rank * len(paths) // world, (rank + 1) * len(paths) // world
    # gloo whatever the device: the results are pickled CPU objects, and a rank that is done early
    # waits in the gather, where NCCL's watchdog would end an unbalanced run
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # gloo prints its connection lines on the C++ stdout: send them to stderr
    dist.init_process_group('gloo', timeout=GATHER_TIMEOUT)
    os.dup2(saved, 1)
    os.close(saved)
    try:
        mine = []
        for result in predict_files(model, paths[lo:hi], settings, batch_size, workers):
            if rank == 0:
                yield result
            else:
                mine.append(result)
        shares = [None] * world if rank == 0 else None
        dist.gather_object(mine, shares, dst=0)  # one collective: bad files cannot desynchronise it
        for share in (shares or [])[1:]:
            yield from share
    finally:
        dist.destroy_process_group()


def evaluate(args, model, files, settings, batch_size, workers, ddp):
    """Score every file and print its line (the original's); returns the rows."""
    rows = []
    bar = tqdm(total=len(files), unit='file', desc='EVAL', disable=not args.quiet, file=sys.stderr)
    try:
        results = predict_sharded(model, [p for p, _ in files], settings, batch_size, workers, ddp)
        # in the order of files; zipped first, so the generator runs to its end and closes the group
        for number, (item, (path, label)) in enumerate(zip(results, files), 1):
            row = {'path': str(path), 'true_label': label, 'top_label': None, 'confidence': None,
                   'rank': None, 'ap': None, 'error': item['error']}
            if item['error'] is None:
                row.update(score(item['probs'], model.classes, label, args.confidence, args.results))
                if not args.quiet:
                    print(number, path.relative_to(args.testdir).as_posix(), 'LABEL:',
                          (row['top_label'], round(row['confidence'], 4)), 'AVGP:', round(row['ap'], 4),
                          flush=True)
            else:
                bar.write(f"ERROR: {path}: {item['error']}", file=sys.stderr)
            rows.append(row)
            bar.update()
    except KeyboardInterrupt:  # as the original: stop, and report what was done
        bar.write('INTERRUPTED', file=sys.stderr)
    finally:
        bar.close()
    return rows


def evaluate_annotated(args, model, files, settings, batch_size, workers, ddp, detection):
    """Predict the annotated recordings and detect their events (detection: thresholds and detect_events'
    other arguments), printing a line for each. Returns (rows in the order of files, {recording:
    windows_of}, {recording: its annotated events}) for the recordings scored."""
    rows = {rec: {'path': str(rec), 'annotation': ann and str(ann), 'annotated': None, 'detected': None,
                  'error': error, 'events': None} for rec, ann, error in files}
    annotations = {rec: ann for rec, ann, error in files if error is None}
    number, windows, references = {rec: n for n, rec in enumerate(rows, 1)}, {}, {}
    bar = tqdm(total=len(annotations), unit='file', desc='EVAL', disable=not args.quiet, file=sys.stderr)
    try:
        results = predict_sharded(model, list(annotations), settings, batch_size, workers, ddp)
        for item, rec in zip(results, annotations):  # results first, as in evaluate
            bar.update()
            error = item['error']
            if error is None:
                found = windows_of(item, settings['sample_rate'])
                try:  # read again, with the duration that clips the events past the end
                    refs, warnings = read_annotations(annotations[rec], found['duration'])
                except AnnotationError as e:  # changed since it was first read
                    error = str(e)
            if error is not None:
                rows[rec]['error'] = error
                bar.write(f'ERROR: {rec}: {error}', file=sys.stderr)
                continue
            for warning in warnings:
                bar.write(f'WARNING: {warning}', file=sys.stderr)
            windows[rec], references[rec] = found, refs
            events = detect_events(**found, thresholds=detection[0], **detection[1])
            rows[rec].update(annotated=len(refs), detected=len(events), events=[e._asdict() for e in events])
            if not args.quiet:
                print(number[rec], rec.name, 'EVENTS:', len(events), 'ANNOTATED:', len(refs), flush=True)
    except KeyboardInterrupt:  # as the original: stop, and report what was done
        bar.write('INTERRUPTED', file=sys.stderr)
    finally:
        bar.close()
    return list(rows.values()), windows, references


def class_table(rows, classes, unknown=()):
    """Per-class precision/recall/F1/support of the scored files, and the confusion matrix (rows
    true, columns predicted); unknown test classes follow the model's, all their files misses."""
    labels = classes + unknown
    index = {c: i for i, c in enumerate(labels)}
    scored = [r for r in rows if r['error'] is None]
    cm = confusion_matrix([index[r['true_label']] for r in scored],
                          [index[r['top_label']] for r in scored], len(labels))
    precision, recall, f1 = class_metrics(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    table = [{'label': c, 'precision': float(precision[i]), 'recall': float(recall[i]),
              'f1': float(f1[i]), 'support': int(support[i]), 'known': c in classes}
             for i, c in enumerate(labels) if support[i] or predicted[i]]
    return table, cm, labels


def report(args, model, rows, unknown, extra):
    """Print the summary, the per-class table and where the plot went; write the reports."""
    scored = [r for r in rows if r['error'] is None]
    background = set(background_classes(args, model)) if args.ignore_background else set()
    ranked = [r for r in scored if r['true_label'] not in background]  # what MAP and ACCURACY count
    mean_ap = float(np.mean([r['ap'] for r in ranked])) if ranked else 0.0
    accuracy = float(np.mean([r['rank'] == 1 for r in ranked])) if ranked else 0.0
    print(f'TESTING DONE!\nERRORS: {len(rows) - len(scored)} / {len(rows)}\nMAP: {mean_ap:.4f}\n'
          f'ACCURACY: {accuracy:.4f}')
    if background:
        print(f'BACKGROUND FILES LEFT OUT OF MAP AND ACCURACY: {len(scored) - len(ranked)} '
              f'({", ".join(sorted(background))})')
    if unknown:
        print('UNKNOWN CLASSES:', ', '.join(unknown))
    table, cm, labels = class_table(rows, model.classes, unknown)
    print(f"{'CLASS':<24} {'PRECISION':>9} {'RECALL':>7} {'F1':>7} {'SUPPORT':>7}")
    for t in table:
        print(f"{t['label']:<24} {t['precision']:>9.4f} {t['recall']:>7.4f} {t['f1']:>7.4f} "
              f"{t['support']:>7d}")
    stem = Path(model.path).stem
    if args.confmatrix and scored:
        png = plot_confusion_matrix(cm, labels, Path(str(args.confmatrix).replace('{model}', stem)),
                                    f'{stem} on {args.testdir.name}: MAP {mean_ap:.3f}',
                                    cfg.NORMALIZE_CONFMATRIX, cfg.CONFMATRIX_MAX_CLASSES)
        print('CONFUSION MATRIX:', png.resolve())
    summary = {'model': model.path, 'test_dir': str(args.testdir), 'files': len(rows), 'scored': len(scored),
               'errors': len(rows) - len(scored), 'map': mean_ap, 'accuracy': accuracy,
               'unknown_classes': unknown, 'background_left_out': len(scored) - len(ranked), **extra,
               'model_meta': model.meta}
    write_reports(args, {'summary': summary, 'classes': table, 'files': rows},
                  ['path', 'true_label', 'top_label', 'confidence', 'rank', 'ap', 'error', 'unknown_class'],
                  ({**r, 'unknown_class': int(r['true_label'] in unknown), 'confidence':
                    None if r['confidence'] is None else f"{r['confidence']:.6f}"} for r in rows))
    return summary


def write_reports(args, results, fields, rows):
    """--csv: one row per file (None as an empty field); --json: the results."""
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fields, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
        print('CSV REPORT:', args.csv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + '\n')
        print('JSON REPORT:', args.json)


def score_text(value):
    """A score with 4 decimals, nan where sed_eval leaves it undefined (None)."""
    return f'{float("nan") if value is None else value:.4f}'


def print_scores(scores, prefix=''):
    """The SEGMENT-BASED and EVENT-BASED lines of model.sed.evaluate's scores."""
    for kind in ('segment', 'event'):
        overall = scores[kind]['overall']
        print(f"{prefix}{kind.upper()}-BASED F1: {score_text(overall['f1'])} ER: "
              f"{score_text(overall['error_rate'])}")


def print_tables(scores, sweep):
    """The per-class scores (and annotated and detected events), then the threshold sweep."""
    head = f"{'SEGMENT F1':>10} {'ER':>7} {'EVENT F1':>9} {'ER':>7}"
    print(f"{'CLASS':<24} {head} {'ANNOTATED':>9} {'DETECTED':>8}")
    for label, segment in scores['segment']['classes'].items():
        event = scores['event']['classes'][label]
        print(f"{label:<24} {score_text(segment['f1']):>10} {score_text(segment['error_rate']):>7} "
              f"{score_text(event['f1']):>9} {score_text(event['error_rate']):>7} {int(event['Nref']):>9d} "
              f"{int(event['Nsys']):>8d}")
    print(f"{'THRESHOLD':<24} {head}")
    for row in sweep:
        seg, event = row['segment']['overall'], row['event']['overall']
        print(f"{row['threshold']:<24.2f} {score_text(seg['f1']):>10} {score_text(seg['error_rate']):>7} "
              f"{score_text(event['f1']):>9} {score_text(event['error_rate']):>7}")


def tune(args, model, windows, references, labels, detection):
    """--tune: the per-class thresholds that maximise segment-based F1, saved where AED_test.py --events
    finds them (with the detection settings they were tuned for); prints them and their scores."""
    thresholds, params = detection
    tuned, classes = tune_thresholds(windows, references, labels, params, thresholds['default'],
                                     segment=args.segment)
    path = thresholds_path(model.path).resolve()
    settings = {k: v for k, v in params.items() if k != 'classes'}
    try:
        save_thresholds(path, tuned, {'model': str(Path(model.path).resolve()), 'detection': settings,
                                      'segment': args.segment, 'tuned_on': str(args.testdir.resolve()),
                                      'classes': classes})
        print('THRESHOLDS SAVED:', path)
    except OSError as e:
        print(f'ERROR: {path}: cannot save the tuned thresholds ({e.strerror or e})', file=sys.stderr)
        path = None
    print('TUNED THRESHOLDS:', tuned)
    durations = {rec: w['duration'] for rec, w in windows.items()}
    scores = sed_scores(references, detect_all(windows, tuned, params), durations, labels, args.segment)
    print_scores(scores, 'TUNED ')
    return {'thresholds': tuned, 'path': path and str(path), 'classes': classes, 'scores': scores}


def report_annotated(args, model, rows, windows, references, detection, extra):
    """Print the scores, the per-class table and the threshold sweep, tune with --tune, write the
    reports. Returns the summary."""
    thresholds, params = detection
    scored = len(references)
    print(f'TESTING DONE!\nERRORS: {len(rows) - scored} / {len(rows)}')
    labels, unknown = label_list(model.classes, params['background'], references)
    if unknown:
        print('UNKNOWN CLASSES:', ', '.join(unknown))
    summary = {'model': model.path, 'test_dir': str(args.testdir), 'annotations': str(args.annotations),
               'files': len(rows), 'scored': scored, 'errors': len(rows) - scored, 'unknown_classes': unknown,
               'thresholds': thresholds, 'detection': {k: v for k, v in params.items() if k != 'classes'},
               'segment': args.segment, **extra, 'model_meta': model.meta}
    results = {'summary': summary}
    if scored:
        durations = {rec: w['duration'] for rec, w in windows.items()}
        results['scores'] = sed_scores(references, detect_all(windows, thresholds, params), durations,
                                       labels, args.segment)
        results['sweep'] = [{'threshold': t, **s} for t, s in
                            threshold_sweep(windows, references, labels, params, segment=args.segment)]
        print_scores(results['scores'])
        print_tables(results['scores'], results['sweep'])
        if args.tune:
            results['tuned'] = tune(args, model, windows, references, labels, detection)
            summary['thresholds_saved'] = results['tuned']['path']
    write_reports(args, {**results, 'files': rows}, ['path', 'annotation', 'annotated', 'detected', 'error'],
                  rows)
    return summary


def score_folder(args, model, files, settings, batch_size, workers, ddp):
    """Evaluate class folders (the original's evaluation): (summary, rows), or None on a torchrun rank > 0."""
    unknown = check_classes(model, files)
    print('TESTING MODEL...')
    start = time.perf_counter()
    rows = evaluate(args, model, files, settings, batch_size, workers, ddp)
    if ddp and ddp[0]:
        return None  # rank 0 reports every file
    return report(args, model, rows, unknown, run_record(args, settings, batch_size, start)), rows


def score_annotated(args, model, files, settings, batch_size, workers, ddp):
    """Score the events of annotated recordings (--annotations); like score_folder."""
    detection = detection_setup(args, model, settings)  # a bad threshold stops the run before decoding
    print('TESTING MODEL...')
    start = time.perf_counter()
    rows, windows, references = evaluate_annotated(args, model, files, settings, batch_size, workers, ddp,
                                                   detection)
    if ddp and ddp[0]:
        return None
    summary = report_annotated(args, model, rows, windows, references, detection,
                               run_record(args, settings, batch_size, start))
    return summary, rows


def run_record(args, settings, batch_size, start):
    return {'seconds': round(time.perf_counter() - start, 3),
            'settings': {**settings, 'batch_size': batch_size, 'threads': torch.get_num_threads(),
                         'max_predictions': args.results, 'confidence_threshold': args.confidence}}


def main(argv=None):  # port of AED_eval's module-level testing
    args = parse_args(argv)
    ddp = distributed_env(os.environ)
    if ddp and ddp[0]:  # under torchrun only rank 0 prints; the others still show a traceback
        sys.stdout = sys.stderr = open(os.devnull, 'w')
        sys.excepthook = lambda *exc: traceback.print_exception(*exc, file=sys.__stderr__)
    check.exit_on(check_config(args, ddp))
    if args.annotations:
        files = list_recordings(args.testdir, args.annotations)
        paths = [rec for rec, _, error in files if error is None]
    else:
        files = list_test_files(args.testdir)
        paths = [p for p, _ in files]
    model, settings, batch_size, workers = open_for_prediction(
        args, ROOT / cfg.MODEL_PATH, spec_defaults(cfg.SPEC_LENGTH, cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE,
                                                   cfg.RESAMPLE_METHOD),
        (cfg.INFER_BATCH_SIZE, cfg.INFER_BATCH_SIZE_CPU), paths, ddp)
    done = (score_annotated if args.annotations else score_folder)(args, model, files, settings, batch_size,
                                                                    workers, ddp)
    if done is None:
        return None
    summary, rows = done
    if not summary['scored']:
        print('ERROR: no test file could be evaluated', file=sys.stderr)
    if summary['errors'] or len(rows) < len(files) or summary.get('thresholds_saved', '') is None:
        sys.exit(1)
    return summary


if __name__ == '__main__':
    main()
