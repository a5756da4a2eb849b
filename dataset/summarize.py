"""Mean accuracy and MAP over the folds of a cross-validation run, as papers report them.

Reads RESULTS_DIR/fold<k>/eval.json (AED_eval.py --json, as crossval.sh writes them),
prints one line per fold and the means over the folds with their sample standard deviation
(n - 1), and writes the same as CSV (RESULTS_DIR/summary.csv unless --csv says otherwise).
A fold without a usable report is listed as failed and left out of the means.

    python -m dataset.summarize runs/us8k
    python -m dataset.summarize runs/us8k --csv us8k_folds.csv
"""
import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

COLUMNS = ['fold', 'status', 'accuracy', 'map', 'files', 'errors']


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('results', type=Path, help='the RESULTS_DIR of crossval.sh')
    p.add_argument('--csv', type=Path, default=None,
                   help='CSV file to write (default: RESULTS_DIR/summary.csv)')
    p.add_argument('--fold', type=int, nargs='+', default=None, metavar='K',
                   help='the folds of the run, a missing one counting as failed '
                        '(default: every fold<k> folder)')
    return p.parse_args(argv)


def read_fold(report):
    """One CSV row of a fold from its eval.json; status 'failed: <reason>' without a usable one."""
    try:
        summary = json.loads(report.read_text())['summary']
        row = {'status': 'ok', 'accuracy': float(summary['accuracy']), 'map': float(summary['map']),
               'files': int(summary['files']), 'errors': int(summary['errors'])}
    except FileNotFoundError:
        return {'status': f'failed: no {report.name}'}
    except (OSError, ValueError, TypeError, KeyError) as e:  # unreadable, not JSON, no summary
        return {'status': f'failed: {report.name}: {type(e).__name__}: {e}'}
    if row['files'] == row['errors']:
        return {**row, 'status': 'failed: no test file could be scored'}
    return row


def mean_std(values):
    """(mean, sample standard deviation), None where there are too few values."""
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def fmt(value):
    return 'n/a' if value is None else f'{value:.4f}'


def main(argv=None):
    args = parse_args(argv)
    folds = args.fold or sorted(int(m.group(1)) for p in args.results.glob('fold*')
                                if p.is_dir() and (m := re.fullmatch(r'fold(\d+)', p.name)))
    if not folds:
        print(f'ERROR: {args.results}: no fold<k> folders', file=sys.stderr)
        sys.exit(2)
    rows = [{'fold': k, **read_fold(args.results / f'fold{k}' / 'eval.json')} for k in folds]
    print(f"{'FOLD':<6} {'ACCURACY':>8} {'MAP':>8} {'FILES':>6} {'ERRORS':>6}")
    for r in rows:
        if r['status'] == 'ok':
            print(f"{r['fold']:<6} {r['accuracy']:>8.4f} {r['map']:>8.4f} {r['files']:>6} {r['errors']:>6}")
        else:
            print(f"{r['fold']:<6} {r['status'].upper()}")
    scored = [r for r in rows if r['status'] == 'ok']
    stats = {key: mean_std([r[key] for r in scored]) for key in ('accuracy', 'map')}
    print(f"MEAN ACCURACY: {fmt(stats['accuracy'][0])} ± {fmt(stats['accuracy'][1])}")
    print(f"MEAN MAP: {fmt(stats['map'][0])} ± {fmt(stats['map'][1])}")
    print(f'FOLDS: {len(rows)} SCORED: {len(scored)} FAILED: {len(rows) - len(scored)} '
          f'(± is the sample standard deviation over the scored folds)')
    path = args.csv or args.results / 'summary.csv'
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        for i, name in enumerate(('mean', 'std')):
            writer.writerow({'fold': name, 'status': f'{len(scored)} scored',
                             **{k: '' if v[i] is None else round(v[i], 6) for k, v in stats.items()}})
    print('SUMMARY CSV:', path)
    return 1 if len(scored) < len(rows) else 0


if __name__ == '__main__':
    sys.exit(main())
