"""Evaluate a trained model on a test folder whose sub-folders are the true classes.

    python AED_eval.py --modelname AED_Demo_model_best.pt       # after bash demo.sh
    python AED_eval.py --testdir dataset/test --quiet --csv results.csv --json results.json
    torchrun --nproc_per_node 4 AED_eval.py --testdir big_test_set --quiet
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

from AED_test import prediction_checks, prediction_flags
from model import config_checks as check
from model.audio import class_folders, spec_defaults
from model.inference import predict_files, prediction_pooling, rank_predictions, true_rank
from model.metrics import class_metrics, confusion_matrix, plot_confusion_matrix
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
                   help='folder with one sub-folder of audio files per class')
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
    return [check.folder('TEST_DIR (--testdir)', args.testdir)] + prediction_checks(args, bool(ddp)) + [
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
    """[(path, true label)] from the class sub-folders, and warnings about stray files."""
    folders, messages = class_folders(test_dir)
    return [(p, class_dir.name) for class_dir, found in folders for p in found], messages


def check_classes(model, files):
    """Test classes the model does not know; exit 2 when it knows none of them."""
    test_classes = sorted({label for _, label in files})
    unknown = [c for c in test_classes if c not in model.classes]
    if len(unknown) == len(test_classes):
        print(f'ERROR: the model knows none of the test classes: model classes '
              f'{", ".join(model.classes)}; test folder classes {", ".join(test_classes)}', file=sys.stderr)
        sys.exit(2)
    for label in unknown:
        print(f"WARNING: test class '{label}' is unknown to the model; its files score as misses",
              file=sys.stderr)
    return unknown


def score(probs, classes, label, threshold, max_predictions):
    """One file's row of the report. AP ranks every class whatever its confidence (the original
    never applied CONFIDENCE_THRESHOLD here); threshold only trims the listed 'predictions'."""
    ranked = rank_predictions(prediction_pooling(probs), classes, 0.0, max_predictions)
    rank = true_rank(ranked, label)
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
    mean_ap = float(np.mean([r['ap'] for r in scored])) if scored else 0.0
    accuracy = float(np.mean([r['rank'] == 1 for r in scored])) if scored else 0.0
    print(f'TESTING DONE!\nERRORS: {len(rows) - len(scored)} / {len(rows)}\nMAP: {mean_ap:.4f}\n'
          f'ACCURACY: {accuracy:.4f}')
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
               'unknown_classes': unknown, **extra, 'model_meta': model.meta}
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, 'w', newline='') as f:  # None is written as an empty field
            fields = ['path', 'true_label', 'top_label', 'confidence', 'rank', 'ap', 'error', 'unknown_class']
            writer = csv.DictWriter(f, fields, extrasaction='ignore')
            writer.writeheader()
            writer.writerows({**r, 'unknown_class': int(r['true_label'] in unknown), 'confidence':
                              None if r['confidence'] is None else f"{r['confidence']:.6f}"} for r in rows)
        print('CSV REPORT:', args.csv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {'summary': summary, 'classes': table, 'files': rows}
        args.json.write_text(json.dumps(results, indent=1) + '\n')
        print('JSON REPORT:', args.json)
    return summary


def main(argv=None):  # port of AED_eval's module-level testing
    args = parse_args(argv)
    ddp = distributed_env(os.environ)
    if ddp and ddp[0]:  # under torchrun only rank 0 prints; the others still show a traceback
        sys.stdout = sys.stderr = open(os.devnull, 'w')
        sys.excepthook = lambda *exc: traceback.print_exception(*exc, file=sys.__stderr__)
    check.exit_on(check_config(args, ddp))
    files, messages = list_test_files(args.testdir)
    for msg in messages:
        print(msg, file=sys.stderr)
    if not files:
        print(f'ERROR: {args.testdir} has no test files in class sub-folders', file=sys.stderr)
        sys.exit(2)
    print('NUMBER OF CLASSES:', len({label for _, label in files}))
    print('NUMBER OF TEST SAMPLES:', len(files))
    model, settings, batch_size, workers = open_for_prediction(
        args, ROOT / cfg.MODEL_PATH, spec_defaults(cfg.SPEC_LENGTH, cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE,
                                                   cfg.RESAMPLE_METHOD),
        (cfg.INFER_BATCH_SIZE, cfg.INFER_BATCH_SIZE_CPU), [p for p, _ in files], ddp)
    unknown = check_classes(model, files)
    print('TESTING MODEL...')
    start = time.perf_counter()
    rows = evaluate(args, model, files, settings, batch_size, workers, ddp)
    if ddp and ddp[0]:
        return None  # rank 0 reports every file
    summary = report(args, model, rows, unknown, {
        'seconds': round(time.perf_counter() - start, 3),
        'settings': {**settings, 'batch_size': batch_size, 'threads': torch.get_num_threads(),
                     'max_predictions': args.results, 'confidence_threshold': args.confidence}})
    if not summary['scored']:
        print('ERROR: no test file could be evaluated', file=sys.stderr)
    if summary['errors'] or len(rows) < len(files):
        sys.exit(1)
    return summary


if __name__ == '__main__':
    main()
