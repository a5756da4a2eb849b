"""Spectrogram extraction: the reference pipeline against AED_spec.py, side by side.

Writes ten 60 s test files at 44.1 kHz and at 22.05 kHz into a temporary
folder, then times each extractor as a whole process (imports included, as a
user sees it), several times, and prints medians, specs/s and ratios. "CPU s"
is user + system time of all its processes; on a shared machine it moves less
than the wall time, and the load average printed with the table says how
busy the machine was.

    python -m bench.bench_spec
    python -m bench.bench_spec --repeats 5 --files 10 --seconds 60
    python -m bench.bench_spec --rates 44100 --tmp /var/tmp
    python -m bench.bench_spec --old 7373183     # also AED_spec.py of that commit, alternated
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench import checkout

ROOT = Path(__file__).resolve().parents[1]


def write_files(folder, n_files, seconds, rate, seed=0):
    """Event-like test audio: tones, sweeps and noise bursts over a noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n_files):
        sig = 0.01 * rng.standard_normal(len(t))
        for start in np.arange(0, seconds, 2.0):
            on = (t >= start) & (t < start + rng.uniform(0.3, 1.5))
            kind = i % 3
            if kind == 0:
                sig[on] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t[on])
            elif kind == 1:
                f0 = rng.uniform(500, 1500)
                sig[on] += 0.3 * np.sin(2 * np.pi * (f0 + 400 * np.sin(2 * np.pi * 2 * t[on])) * t[on])
            else:
                sig[on] += 0.2 * rng.standard_normal(on.sum())
        sf.write(folder / f'file_{i:02d}.wav', np.clip(sig, -1, 1), rate, subtype='PCM_16')


def timed(cmd):
    """Wall-clock and CPU seconds (user + system, all processes) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def count_specs(folder):
    return sum(1 for _ in Path(folder).rglob('*.png'))


def run(rows, label, src, tmp, repeats, workers, trees):
    py = sys.executable
    commands = {'reference (psf + scipy + cv2)': [py, str(ROOT / 'bench' / 'reference_spec.py'), str(src)]}
    for w in workers:
        for name, tree in trees.items():
            commands[f'AED_spec.py --workers {w}{name}'] = [py, str(tree / 'AED_spec.py'), '--src', str(src),
                                                            '--workers', str(w), '--overwrite', '--dst']
    times = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    n_specs = {}
    for r in range(repeats):  # interleave runs so that machine noise hits all alike
        for i, (name, cmd) in enumerate(commands.items()):
            dst = Path(tmp) / f'out_{label}_{i}_{r}'
            wall, cpu_s = timed(cmd + [str(dst)])
            times[name].append(wall)
            cpu[name].append(cpu_s)
            n_specs[name] = count_specs(dst)
            shutil.rmtree(dst)  # keep the disk cache and free space the same for every run
    base = None
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = n_specs[name] / med
        base = base or rate
        rows.append((label, name, n_specs[name], med, statistics.median(cpu[name]),
                     1000 * med / n_specs[name], rate, rate / base))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--files', type=int, default=10)
    p.add_argument('--seconds', type=float, default=60)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    p.add_argument('--rates', type=int, nargs='+', default=[44100, 22050],
                   help='sample rates of the test files')
    p.add_argument('--tmp', type=Path, default=None,
                   help='folder for the test files and outputs (default: the system temp folder)')
    p.add_argument('--old', default=None, metavar='REV', help="also time AED_spec.py of this commit's code")
    args = p.parse_args(argv)
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        trees = {'': ROOT}
        if args.old:
            trees[f', code of {args.old}'] = checkout(args.old, Path(tmp) / 'old')
        for rate in args.rates:
            src = Path(tmp) / f'src_{rate}'
            (src / 'events').mkdir(parents=True)
            write_files(src / 'events', args.files, args.seconds, rate)
            run(rows, f'{rate / 1000:g} kHz', src, tmp, args.repeats, args.workers, trees)
    print(f'\n{args.files} files x {args.seconds:g} s, median of {args.repeats} whole-process runs '
          f'(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; '
          f'{os.cpu_count()} cores)')
    print('| input | extractor | specs | wall s | CPU s | ms/spec | specs/s | vs reference |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for label, name, n, med, cpu_s, ms, rate, ratio in rows:
        print(f'| {label} | {name} | {n} | {med:.2f} | {cpu_s:.2f} | {ms:.2f} | {rate:.0f} | {ratio:.2f}x |')
    return rows


if __name__ == '__main__':
    main()
