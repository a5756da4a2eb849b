"""CPU threads for inference: AED_test.py with torch's default thread count against --threads 0 (the rule
in model/threads.py), on an idle machine and beside a busy-loop process.

A checkpoint of the demo-size network (128x64 input, 16 filters, random weights:
the timing does not depend on them) and a test file are written to a temporary
folder. Each measurement is one AED_test.py process over several copies of the
file with --json; ms/spec comes from its per-file records, the first file of
each process dropped as warm-up. 'old' passes --threads N with N = torch's
default (what AED_test did before it chose), 'new' passes --threads 0. For
'busy', one `while True: pass` process runs beside AED_test.py. Runs alternate
so that a noisy machine hits every variant alike; medians and ratios.

    python -m bench.bench_threads
    python -m bench.bench_threads --repeats 5 --seconds 30
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_infer import write_audio

ROOT = Path(__file__).resolve().parents[1]

MAKE_CHECKPOINT = """
import sys, torch
from model.checkpoint import save_checkpoint
from model.net import AEDNet
torch.manual_seed(0)
im_size, filters = (int(sys.argv[2]), int(sys.argv[3])), int(sys.argv[4])
net = AEDNet(5, im_size, 1, filters)
meta = {'classes': ['a', 'b', 'c', 'd', 'e'], 'run_name': 'bench', 'epoch': 0, 'im_size': im_size,
        'im_dim': 1, 'filters': filters, 'dropout': 0.5, 'nonlinearity': 'relu', 'multi_label': False,
        'spec': {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}}
save_checkpoint(sys.argv[1], net, meta)
print(torch.get_num_threads())
"""


def run(cmd, env):
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f'{cmd[:3]} failed ({done.returncode}): {done.stderr.strip()[-500:]}')
    return done


def ms_per_spec(ckpt, audio, copies, threads, env):
    """ms/spec of every file but the first (warm-up) of one AED_test.py process."""
    done = run([sys.executable, 'AED_test.py', '--modelname', str(ckpt), '--device', 'cpu', '--json',
                '--threads', str(threads), '--filenames'] + [str(audio)] * (copies + 1), env)
    records = [json.loads(line) for line in done.stdout.splitlines()][1:]
    return [r['ms'] / r['specs'] for r in records]


def busy_loop():
    return subprocess.Popen([sys.executable, '-c', 'while True: pass'])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=30, help='length of the test file')
    p.add_argument('--repeats', type=int, default=3, help='rounds of each measurement')
    p.add_argument('--copies', type=int, default=4, help='timed copies of the file per process')
    p.add_argument('--im-size', type=int, nargs=2, default=(128, 64), metavar=('W', 'H'))
    p.add_argument('--filters', type=int, default=16)
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    times = {(load, variant): [] for load in ('idle', 'busy') for variant in ('old', 'new')}
    loads = {'idle': [], 'busy': []}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, audio = Path(tmp) / 'demo_size.pt', Path(tmp) / 'test.wav'
        write_audio(audio, args.seconds)
        torch_default = int(run([sys.executable, '-c', MAKE_CHECKPOINT, str(ckpt), *map(str, args.im_size),
                                 str(args.filters)], env).stdout)
        for _ in range(args.repeats):
            for load in ('idle', 'busy'):
                hog = busy_loop() if load == 'busy' else None
                try:
                    if hog:
                        time.sleep(0.5)  # let it take its core
                    for variant, threads in (('old', torch_default), ('new', 0)):
                        loads[load].append(os.getloadavg()[0])
                        times[(load, variant)] += ms_per_spec(ckpt, audio, args.copies, threads, env)
                finally:
                    if hog:
                        hog.kill()
                        hog.wait()

    med = {key: statistics.median(v) for key, v in times.items()}
    w, h = args.im_size
    print(f'\nCPU, {os.cpu_count()} cores, {w}x{h} input, {args.filters} filters; AED_test.py on a '
          f'{args.seconds:g} s file; median of {len(times[("idle", "old")])} files per cell; '
          f'old = torch default ({torch_default} threads), new = --threads 0')
    print('| machine | old ms/spec | new ms/spec | old / new | 1-min load avg |')
    print('|---|---:|---:|---:|---:|')
    for load in ('idle', 'busy'):
        label = 'idle (no busy loop added)' if load == 'idle' else 'one busy-loop process beside it'
        print(f'| {label} | {med[(load, "old")]:.2f} | {med[(load, "new")]:.2f} | '
              f'{med[(load, "old")] / med[(load, "new")]:.2f} | {statistics.median(loads[load]):.2f} |')
    print(f'busy / idle: old {med[("busy", "old")] / med[("idle", "old")]:.2f}x, '
          f'new {med[("busy", "new")] / med[("idle", "new")]:.2f}x')
    return med


if __name__ == '__main__':
    main()
