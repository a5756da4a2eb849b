"""AED_test.py --events against --timeline on the same files, and the detection alone.

Whole AED_test.py runs on --files recordings of --seconds each, the two flags alternated
round by round (a busy machine slows both alike), timed by --timing's `files` figure: from the
loaded model to the last line, prediction included. The goal is at most 5 % more for --events.
The detection alone (model.events.detect_events on an hour of windows, 1 s hop, 5 classes,
smoothing 3) is timed in this process and set against predicting those windows.

    python -m bench.bench_events
    python -m bench.bench_events --quick
    python -m bench.bench_events --im-size 128 64 --filters 16      # the demo's network
"""
import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_infer import MAKE_CHECKPOINT, run, write_audio
from model.audio import split_bounds
from model.events import detect_events


def files_ms(stderr):
    """The `files … ms` of AED_test.py --timing."""
    return float(re.search(r'files (\d+) ms', stderr).group(1))


def detection_ms(windows, repeats, classes=5):
    """Median ms of detect_events on `windows` windows of random probabilities."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(classes) * 0.3, size=windows)  # (W, C), peaky like softmax outputs
    names = [f'class{k}' for k in range(classes)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        detect_events(probs, np.arange(windows, dtype=float), windows + 2.0, names, 0.5, 1.0, 3,
                      smoothing=3, min_length=0.5, merge_gap=0.5)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='one short file, two rounds (a smoke run)')
    p.add_argument('--repeats', type=int, default=None, help='alternated rounds (default 3, quick 2)')
    p.add_argument('--files', type=int, default=None, help='recordings per run (default 2, quick 1)')
    p.add_argument('--seconds', type=float, default=None, help='their length (default 60, quick 20)')
    p.add_argument('--im-size', type=int, nargs=2, default=(512, 256), metavar=('W', 'H'))
    p.add_argument('--filters', type=int, default=64)
    args = p.parse_args(argv)
    for name, full, quick in (('repeats', 3, 2), ('files', 2, 1), ('seconds', 60, 20)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv=None):
    args = parse_args(argv)
    py, times = sys.executable, {'--timeline': [], '--events': []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = tmp / 'model.pt'
        run([py, '-c', MAKE_CHECKPOINT, str(ckpt), *map(str, args.im_size), str(args.filters)])
        wavs = [str(tmp / f'rec{i}.wav') for i in range(args.files)]
        for i, wav in enumerate(wavs):
            write_audio(wav, args.seconds, seed=i)
        for _ in range(args.repeats):
            for flag, found in times.items():
                done, _ = run([py, 'AED_test.py', '--filenames', *wavs, '--modelname', str(ckpt), '--device',
                               'cpu', '--timing', flag])
                found.append(files_ms(done.stderr))
    windows = args.files * len(split_bounds(int(args.seconds * 44100), 44100, 3, 2))  # the checkpoint's
    med = statistics.median
    timeline, events = med(times['--timeline']), med(times['--events'])
    ratio = med([e / t for e, t in zip(times['--events'], times['--timeline'])])
    alone = detection_ms(3600, max(5, args.repeats))
    share = alone / (3600 * timeline / windows)  # of predicting an hour of windows at this run's rate
    print(f'\ncpu, {args.im_size[0]}x{args.im_size[1]} input, {args.filters} filters; medians of '
          f'{args.repeats} alternated round(s)')
    print('| measurement | unit | median | ratio |')
    print('|---|---|---:|---:|')
    print(f'| AED_test.py --timeline, {args.files} x {args.seconds:g} s ({windows} windows) | ms '
          f'| {timeline:,.0f} | 1.00 |')
    print(f'| AED_test.py --events, same files | ms | {events:,.0f} | {ratio:.3f} |')
    print(f'| detect_events alone, 1 hour of windows (3,600 x 5 classes) | ms | {alone:,.1f} | {share:.5f} |')
    print(f'NOTE: --events costs {100 * (ratio - 1):+.1f} % over --timeline (goal <= 5 %); detecting the '
          f'events of an hour of windows takes {100 * share:.3f} % of the time to predict them')
    return times


if __name__ == '__main__':
    main()
