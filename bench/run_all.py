"""Run every benchmark and collect their side-by-side tables into one Markdown file.

Each benchmark runs as its own process (so its timings include nothing of the
others) and prints a Markdown table; this script gathers the tables, adds the
machine they came from, prints the result and writes it to bench/results.md.

    python -m bench.run_all
    python -m bench.run_all --quick
    python -m bench.run_all --out /tmp/results.md
    python -m bench.run_all --old 7373183     # extraction and inference also against that commit's code

Run it from the repository root (the benchmarks import the model package).
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (title, script, arguments for a full run, arguments for --quick)
BENCHMARKS = [
    ('Spectrogram extraction (AED_spec.py)', 'bench_spec', [], ['--repeats', '1', '--files', '4']),
    ('Training throughput (AED_train.py)', 'bench_train', [], ['--steps', '2']),
    ('Epoch overhead (AED_train.py)', 'bench_train', ['--epochs-overhead'],
     ['--epochs-overhead', '--epochs', '2']),
    ('Inference (AED_eval.py, AED_test.py)', 'bench_infer', [], ['--quick', '--no-compile']),
    ('CPU threads for inference, idle and busy (AED_test.py)', 'bench_threads', [],
     ['--repeats', '1', '--copies', '2']),
    ('Event detection (AED_test.py --events against --timeline)', 'bench_events', [], ['--quick']),
]


def machine():
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f'{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, '
            f'torch {torch.__version__}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repeats and steps (a smoke run)')
    p.add_argument('--out', type=Path, default=HERE / 'results.md', help='Markdown file to write')
    p.add_argument('--old', default=None, metavar='REV',
                   help="also time extraction and inference with this commit's code")
    args = p.parse_args(argv)
    sections = [f'# Benchmark results\n\n{datetime.date.today()}, {machine()}\n']
    failed = []
    for title, script, full, quick in BENCHMARKS:
        print(f'== {title}', flush=True)
        cmd = [sys.executable, '-m', f'bench.{script}'] + (quick if args.quick else full)
        if args.old and script in ('bench_spec', 'bench_infer'):
            cmd += ['--old', args.old]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if run.returncode != 0:
            failed.append(script)
            print(run.stdout + run.stderr, file=sys.stderr)
            continue
        print(run.stdout, flush=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith(('|', '#', 'NOTE', 'AED_test overhead'))
                 or 'median' in line]
        sections.append(f'## {title}\n\n`python -m bench.{script} {" ".join(full)}`'.rstrip() + '\n\n'
                        + '\n'.join(lines) + '\n')
    args.out.write_text('\n'.join(sections))
    print(f'wrote {args.out}')
    if failed:
        sys.exit(f'ERROR: benchmark(s) failed: {", ".join(failed)}')


if __name__ == '__main__':
    main()
