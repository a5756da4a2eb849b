"""Inference speed: AED_test.py's pipeline against the bare network, and a whole AED_test.py run.

A checkpoint of the default network (512x256 input, 64 filters, random
weights) is written to a temporary folder. Then, side by side in one run:

1. ms/spec of AED_test.py on a 60 s file (read, spectrograms, resize, batches
   of BATCH_SIZE, pooling), taken from its --json output with the first file
   of each process dropped as warm-up;
2. ms/spec of the same network's forward pass alone, same batch sizes, on
   random tensors, in a process of its own;
3. the wall time of `python AED_test.py --filenames <3 s file> --modelname <ckpt>`
   as a user sees it, with `python -c "import torch"` and AED_test's own
   --timing breakdown (imports, model load) for the start-up share.

Runs alternate so that a noisy machine hits all measurements alike; medians.

    python -m bench.bench_infer
    python -m bench.bench_infer --repeats 5 --seconds 60
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]

# Run with cwd=ROOT so that `python -c` finds the model package
MAKE_CHECKPOINT = """
import sys, torch
from model.checkpoint import save_checkpoint
from model.net import AEDNet
torch.manual_seed(0)
net = AEDNet(5, (512, 256), 1, 64)
meta = {'classes': ['a', 'b', 'c', 'd', 'e'], 'run_name': 'bench', 'epoch': 0,
        'im_size': (512, 256), 'im_dim': 1, 'filters': 64, 'dropout': 0.5,
        'nonlinearity': 'relu', 'multi_label': False,
        'spec': {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}}
save_checkpoint(sys.argv[1], net, meta)
"""

BARE_FORWARD = """
import json, sys, time, torch
from model.inference import load_model, predict
path, windows, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = load_model(path, '.', 'cpu')
x = torch.rand(windows, 1, 256, 512)
with torch.inference_mode():
    model.net(x[:batch])  # warm-up, as the dropped first file of the pipeline runs
times = []
for _ in range(repeats):
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, windows, batch):
            model.net(x[i:i + batch])
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""


def write_audio(path, seconds, rate=44100, seed=0):
    """Tone beeps and noise bursts over a noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = 0.01 * rng.standard_normal(len(t))
    for start in np.arange(0, seconds, 1.5):
        on = (t >= start) & (t < start + rng.uniform(0.2, 1.0))
        sig[on] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 5000) * t[on])
    sf.write(path, np.clip(sig, -1, 1), rate, subtype='PCM_16')


def run(cmd):
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f'{cmd[:3]} failed ({done.returncode}): {done.stderr.strip()[-500:]}')
    return done, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seconds', type=float, default=60, help='length of the long test file')
    p.add_argument('--repeats', type=int, default=3, help='rounds of each measurement')
    p.add_argument('--files-per-process', type=int, default=3,
                   help='copies of the long file per AED_test.py process (first = warm-up)')
    p.add_argument('--batch-size', type=int, default=32, help="AED_test.py's batch size (cfg.BATCH_SIZE)")
    args = p.parse_args(argv)
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        long_file, short_file, ckpt = tmp / 'long.wav', tmp / 'short.wav', tmp / 'bench_model.pt'
        write_audio(long_file, args.seconds)
        write_audio(short_file, 3.0, seed=1)
        run([py, '-c', MAKE_CHECKPOINT, str(ckpt)])

        pipeline_ms, bare_ms, whole_s, torch_s, imports_ms, load_ms = [], [], [], [], [], []
        windows = None
        for _ in range(args.repeats):
            done, _ = run([py, 'AED_test.py', '--modelname', str(ckpt), '--device', 'cpu', '--json',
                           '--filenames'] + [str(long_file)] * (args.files_per_process + 1))
            records = [json.loads(line) for line in done.stdout.splitlines()][1:]  # drop warm-up
            windows = records[0]['specs']
            pipeline_ms += [r['ms'] / r['specs'] for r in records]

            done, _ = run([py, '-c', BARE_FORWARD, str(ckpt), str(windows), str(args.batch_size),
                           str(args.files_per_process)])
            bare_ms += [t / windows for t in json.loads(done.stdout)]

            _, wall = run([py, '-c', 'import torch'])
            torch_s.append(wall)
            done, wall = run([py, 'AED_test.py', '--filenames', str(short_file), '--modelname',
                              str(ckpt), '--device', 'cpu', '--timing'])
            whole_s.append(wall)
            timing = re.search(r'imports (\d+) ms, model load (\d+) ms', done.stderr)
            imports_ms.append(int(timing.group(1)))
            load_ms.append(int(timing.group(2)))

    pipe, bare = statistics.median(pipeline_ms), statistics.median(bare_ms)
    whole, torch_import = statistics.median(whole_s), statistics.median(torch_s)
    rows.append(('pipeline: AED_test.py on a %g s file (%d specs)' % (args.seconds, windows),
                 'ms/spec', pipe, pipe / bare))
    rows.append(('bare forward: same network and batches, random input', 'ms/spec', bare, 1.0))
    rows.append(('whole AED_test.py process, one 3 s file', 's', whole, None))
    rows.append(('  of which python -c "import torch"', 's', torch_import, torch_import / whole))
    rows.append(('  of which imports inside AED_test.main', 's', statistics.median(imports_ms) / 1000,
                 statistics.median(imports_ms) / 1000 / whole))
    rows.append(('  of which model load (checkpoint to network)', 's', statistics.median(load_ms) / 1000,
                 statistics.median(load_ms) / 1000 / whole))
    print(f'\nCPU, 512x256 input, 64 filters, batch {args.batch_size}; median of {len(pipeline_ms)} '
          f'pipeline and {len(bare_ms)} bare-forward measurements and {len(whole_s)} whole-process runs')
    print('| measurement | unit | median | vs bare forward / share of whole |')
    print('|---|---|---:|---:|')
    for name, unit, value, ratio in rows:
        print(f'| {name} | {unit} | {value:.3f} | {"" if ratio is None else f"{ratio:.2f}"} |')
    print(f'pipeline overhead over the bare forward pass: {100 * (pipe / bare - 1):+.1f} % (goal <= 25 %); '
          f'whole process {whole:.2f} s (goal < 3 s)')
    return rows


if __name__ == '__main__':
    main()
