"""Inference speed and memory: AED_eval.py and AED_test.py against the bare network, side by side.

Checkpoints of the default network (512x256 input, 64 filters, random
weights) are written to a temporary folder. Then, in one run:

1. spectrograms/s of the vectorised torch spectrogram against the old
   per-window loop (a copy is kept below) and the numpy path, on --device;
2. the bare forward pass (model.inference.predict on random windows: same
   batch, precision and memory layout), without and with --compile;
3. AED_eval.py steady state: windows/s from the end of its first network batch
   to the end of its last (process start and model load excluded), on
   --eval-files files of --eval-seconds;
4. AED_test.py on two long files, timed the same way, and its overhead over
   the bare forward pass;
5. peak RSS (GNU time's "Maximum resident set size": the largest process,
   main or loader worker) of AED_eval.py on a folder of one long file plus
   three short ones, and of AED_test.py on the long file, for a 1-minute and
   a --long-minutes file (on a CPU with a narrower network, --rss-filters, so
   that an hour of windows runs in about a minute);
6. on a CPU: AED_eval.py on the make_demo.py test split against the code of
   commit --old (default: main before the lean restructuring of issue 16),
   whole processes, alternated; and the whole AED_test.py process for one 3 s
   file, the same way.

    python -m bench.bench_infer
    python -m bench.bench_infer --quick
    python -m bench.bench_infer --device cuda
    python -m bench.bench_infer --quick --no-compile --old 896539f
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

from bench import checkout

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = '7373183'  # main before the lean restructuring (issue 16); 896539f: before streaming
GNU_TIME = '/usr/bin/time'

# Run with cwd=ROOT (or an old tree) so that `python -c` finds the model package
MAKE_CHECKPOINT = """
import sys, torch
from model.checkpoint import save_checkpoint
from model.net import AEDNet
path, w, h, filters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
net = AEDNet(5, (w, h), 1, filters)
meta = {'classes': ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren'], 'run_name': 'bench', 'epoch': 0,
        'im_size': (w, h), 'im_dim': 1, 'filters': filters, 'dropout': 0.5,
        'nonlinearity': 'relu', 'multi_label': False,
        'spec': {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}}
save_checkpoint(path, net, meta)
"""

BARE_FORWARD = """
import json, sys, time, torch
from model.inference import predict
from model.session import compile_model, load_model
path, device, batch, batches, compiled = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
model = load_model(path, '.', device)
warning = compile_model(model, batch) if compiled else None
if warning:
    print(warning, file=sys.stderr)
x = torch.rand(batch, 1, 256, 512, device=model.device)
predict(model.net, x, model.device, batch_size=batch)  # warm-up (and compilation)
predict(model.net, x, model.device, batch_size=batch)
start = time.perf_counter()
for _ in range(batches):
    predict(model.net, x, model.device, batch_size=batch)  # ends with .cpu(): synchronised
print(json.dumps(batch * batches / (time.perf_counter() - start)))
"""

# Times every network batch of a script run in this process (predict ends synchronised)
TIMED_SCRIPT = """
import json, sys, time
import model.inference as inference
marks, real = [], inference.predict
def timed(*args, **kwargs):
    out = real(*args, **kwargs)
    marks.append((time.perf_counter(), len(out)))
    return out
inference.predict = timed
script = __import__(sys.argv[1])
try:
    script.main(sys.argv[2:])
except SystemExit:
    pass
print('MARKS ' + json.dumps(marks), file=sys.stderr)
"""


def old_torch_spectrograms(sig, bounds, rate, seconds, nfft=511):
    """The per-window loop that model.audio._torch_spectrograms replaced (for comparison only)."""
    import torch
    import torch.nn.functional as F
    from model.audio import SPEC_HEIGHT, SPEC_WIDTH, _frame_count, frame_params
    frame_len, frame_step = frame_params(rate, seconds)
    width = min(frame_len, nfft)
    frames = []
    for a, b in bounds:  # framesig's frames of each chunk, zero-padded at its end
        n_frames = _frame_count(b - a, frame_len, frame_step)
        chunk = F.pad(sig[a:b], (0, max(0, (n_frames - 1) * frame_step + width - (b - a))))
        frames.append(chunk.unfold(0, width, frame_step)[:n_frames])
    mags = torch.fft.rfft(torch.cat(frames).float(), n=nfft).abs()
    out = torch.zeros((len(bounds), SPEC_HEIGHT, SPEC_WIDTH), dtype=torch.float32, device=sig.device)
    offset = 0
    for i, count in enumerate(len(f) for f in frames):
        mag = mags[offset:offset + count]
        offset += count
        mag = mag - mag.min()
        peak = mag.max()
        if peak > 0:
            mag = mag / peak
        rotated = mag.T.flip(0)[:SPEC_HEIGHT, :SPEC_WIDTH]
        out[i, :rotated.shape[0], :rotated.shape[1]] = rotated
    return out


def write_audio(path, seconds, rate=44100, seed=0):
    """Tone beeps and noise bursts over a noise floor, 16-bit, written in pieces."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, 'w', rate, 1, 'PCM_16') as f:
        for start in np.arange(0, seconds, 60.0):
            t = np.arange(int(min(60.0, seconds - start) * rate)) / rate
            sig = 0.01 * rng.standard_normal(len(t))
            for s in np.arange(0, t[-1] if len(t) else 0, 1.5):
                on = (t >= s) & (t < s + rng.uniform(0.2, 1.0))
                sig[on] += 0.3 * np.sin(2 * np.pi * rng.uniform(300, 5000) * t[on])
            f.write(np.clip(sig, -1, 1))


def run(cmd, cwd=ROOT, check=True):
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if check and done.returncode:
        raise RuntimeError(f'{cmd[:4]} failed ({done.returncode}): {done.stderr.strip()[-800:]}')
    return done, wall


def steady_rate(stderr):
    """Windows/s from the end of the first network batch to the end of the last."""
    marks = json.loads(stderr.rsplit('MARKS ', 1)[1].splitlines()[0])
    if len(marks) < 2:
        return float('nan'), sum(n for _, n in marks)
    return sum(n for _, n in marks[1:]) / (marks[-1][0] - marks[0][0]), sum(n for _, n in marks)


def spectrogram_rates(device, seconds, repeats):
    """windows/s of the numpy path, the vectorised torch path and the old loop on device."""
    import torch
    from model.audio import spectrograms, split_bounds
    rng = np.random.default_rng(0)
    sig = (0.1 * rng.standard_normal(int(seconds * 44100))).astype(np.float32)
    bounds = split_bounds(len(sig), 44100, 3, 2)[:256]
    tsig = torch.from_numpy(sig).to(device)
    sync = torch.cuda.synchronize if tsig.is_cuda else (lambda: None)
    candidates = {'numpy (CPU, AED_spec)': lambda: spectrograms(sig, bounds),
                  'torch, vectorised': lambda: spectrograms(tsig, bounds),
                  'torch, old per-window loop': lambda: old_torch_spectrograms(tsig, bounds, 44100, 3)}
    times = {name: [] for name in candidates}
    for fn in candidates.values():
        fn(), sync()  # warm-up
    for _ in range(max(3, repeats)):  # alternated rounds: a busy machine slows all alike
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: len(bounds) / statistics.median(t) for name, t in times.items()}


def peak_rss_mb(cmd, cwd=ROOT):
    """GNU time's maximum resident set size in MB, or None without GNU time."""
    done, _ = run([GNU_TIME, '-v'] + cmd, cwd=cwd, check=False)
    found = re.search(r'Maximum resident set size \(kbytes\): (\d+)', done.stderr)
    if not found:
        raise RuntimeError(f'{cmd[:3]} under {GNU_TIME} gave no RSS: {done.stderr.strip()[-800:]}')
    return int(found.group(1)) / 1024


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--quick', action='store_true', help='small sizes and one repeat (a smoke run)')
    p.add_argument('--repeats', type=int, default=None, help='rounds of each timing (default 3, quick 1)')
    p.add_argument('--batch-size', type=int, default=None, help='network batch (None = the scripts\' default)')
    p.add_argument('--eval-files', type=int, default=None, help='AED_eval files (CPU 4, CUDA 40)')
    p.add_argument('--eval-seconds', type=float, default=None, help='their length (CPU 30, CUDA 120)')
    p.add_argument('--test-seconds', type=float, default=None, help='AED_test long files (CPU 60, CUDA 1200)')
    p.add_argument('--long-minutes', type=float, default=None, help='the long file of the RSS check (60)')
    p.add_argument('--rss-filters', type=int, default=None, help='network width of the RSS runs (CPU 8, CUDA 64)')
    p.add_argument('--no-compile', action='store_true', help='skip the --compile forward pass')
    p.add_argument('--old', default=OLD_COMMIT,
                   help='commit whose code the whole-process CPU runs are timed against')
    args = p.parse_args(argv)
    cuda, quick = args.device.startswith('cuda'), args.quick
    defaults = {'repeats': 1 if quick else 3, 'eval_files': 2 if quick else (40 if cuda else 4),
                'eval_seconds': 20 if quick else (120 if cuda else 30),
                'test_seconds': 20 if quick else (1200 if cuda else 60),
                'long_minutes': 10 if quick else 60, 'rss_filters': 64 if cuda else 8}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch_size is None:
        import config as cfg
        args.batch_size = cfg.INFER_BATCH_SIZE if cuda else cfg.INFER_BATCH_SIZE_CPU
    return args


def main(argv=None):
    args = parse_args(argv)
    py, dev, rows, notes = sys.executable, args.device, [], []
    cpu = not dev.startswith('cuda')
    common = ['--device', dev, '--batch-size', str(args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, rss_ckpt = tmp / 'bench_model.pt', tmp / 'rss_model.pt'
        run([py, '-c', MAKE_CHECKPOINT, str(ckpt), '512', '256', '64'])
        run([py, '-c', MAKE_CHECKPOINT, str(rss_ckpt), '512', '256', str(args.rss_filters)])

        # 1. spectrograms
        rates = spectrogram_rates(dev, 260, args.repeats)
        old_loop = rates['torch, old per-window loop']
        for name, rate in rates.items():
            rows.append((f'spectrograms on {dev}: {name}, 256 windows of 3 s', 'windows/s', rate,
                         rate / old_loop))

        # 2-4. rounds of: bare forward, AED_eval and AED_test steady state, so that a
        # busy machine slows all three alike; ratios are taken within each round
        test_dir = tmp / 'evalset' / 'beeps'
        test_dir.mkdir(parents=True)
        for i in range(args.eval_files):
            write_audio(test_dir / f'f{i:03d}.wav', args.eval_seconds, seed=i)
        long_file = tmp / 'long.wav'
        write_audio(long_file, args.test_seconds, seed=99)
        bare, ev, te = [], [], []
        for _ in range(args.repeats):
            bare.append(json.loads(run([py, '-c', BARE_FORWARD, str(ckpt), dev, str(args.batch_size),
                                        '2' if cpu else '40', '0'])[0].stdout))
            done, _ = run([py, '-c', TIMED_SCRIPT, 'AED_eval', '--testdir', str(tmp / 'evalset'), '--modelname',
                           str(ckpt), '--confmatrix', '', '--quiet'] + common)
            rate, windows = steady_rate(done.stderr)
            ev.append(rate)
            done, _ = run([py, '-c', TIMED_SCRIPT, 'AED_test', '--modelname', str(ckpt), '--json', '--filenames']
                          + [str(long_file)] * 2 + common)
            rate, specs = steady_rate(done.stderr)
            te.append(rate)
        med = statistics.median
        rows.append((f'bare forward, batch {args.batch_size}', 'windows/s', med(bare), 1.0))
        if not args.no_compile:
            done, _ = run([py, '-c', BARE_FORWARD, str(ckpt), dev, str(args.batch_size),
                           '2' if cpu else '40', '1'])
            compiled = json.loads(done.stdout)
            rows.append(('bare forward, --compile (one run)', 'windows/s', compiled, compiled / med(bare)))
            if done.stderr.strip():
                notes.append(f'compile: {done.stderr.strip().splitlines()[-1]}')
        rows.append((f'AED_eval steady state, {args.eval_files} files of {args.eval_seconds:g} s '
                     f'({windows} windows)', 'windows/s', med(ev), med([e / b for e, b in zip(ev, bare)])))
        test_ratio = med([t / b for t, b in zip(te, bare)])
        rows.append((f'AED_test steady state, 2 files of {args.test_seconds:g} s ({specs} specs)', 'specs/s',
                     med(te), test_ratio))
        overhead, eval_share = 100 * (1 / test_ratio - 1), 100 * rows[-2][3]

        # 5. peak RSS, 1-minute and long file
        if not Path(GNU_TIME).exists():
            notes.append(f'peak RSS not measured: GNU time ({GNU_TIME}) is not installed '
                         f'(apt-get install time)')
        else:
            rss = {}
            for minutes in (1, args.long_minutes):
                folder = tmp / f'rss{minutes:g}' / 'beeps'
                folder.mkdir(parents=True)
                write_audio(folder / 'long.wav', minutes * 60, seed=7)
                for i in range(3):
                    write_audio(folder / f'short{i}.wav', 4, seed=20 + i)
                rss[minutes] = (
                    peak_rss_mb([py, 'AED_eval.py', '--testdir', str(folder.parent), '--modelname',
                                 str(rss_ckpt), '--confmatrix', '', '--quiet', '--device', dev]),
                    peak_rss_mb([py, 'AED_test.py', '--filenames', str(folder / 'long.wav'), '--modelname',
                                 str(rss_ckpt), '--json', '--device', dev]))
            for k, name in enumerate(('AED_eval', 'AED_test')):
                one, long = rss[1][k], rss[args.long_minutes][k]
                rows.append((f'peak RSS {name}, 1-minute file', 'MB', one, None))
                rows.append((f'peak RSS {name}, {args.long_minutes:g}-minute file', 'MB', long, long / one))

        # 6. CPU: the demo test split against the old code, and a whole AED_test process
        if cpu:
            old_rows = compare_demo_eval(py, tmp, args.repeats, args.old)
            rows += old_rows
            write_audio(tmp / 'short.wav', 3.0, seed=1)
            whole, old = [], []
            for _ in range(max(3, args.repeats)):  # alternated: start-up times swing by a second here
                for times, tree in ((whole, ROOT), (old, tmp / 'old')):
                    times.append(run([py, 'AED_test.py', '--filenames', str(tmp / 'short.wav'), '--modelname',
                                      str(ckpt), '--device', 'cpu'], cwd=tree)[1])
            rows.append(('whole AED_test.py process, one 3 s file', 's', statistics.median(whole), None))
            rows.append((f'  same, code of {args.old}', 's', statistics.median(old),
                         statistics.median(old) / statistics.median(whole)))

    print(f'\n{dev}, 512x256 input, 64 filters (RSS runs: {args.rss_filters}), batch {args.batch_size}; '
          f'medians of {args.repeats} run(s)')
    print('| measurement | unit | median | ratio |')
    print('|---|---|---:|---:|')
    for name, unit, value, ratio in rows:
        print(f'| {name} | {unit} | {value:,.1f} | {"" if ratio is None else f"{ratio:.2f}"} |')
    print(f'AED_test overhead over the bare forward pass: {overhead:+.1f} % (goal <= 25 %); '
          f'AED_eval steady state {eval_share:.0f} % of the bare forward (goal >= 70 % on a GPU)')
    print('ratio: spectrograms against the old loop; throughput against the bare forward pass; RSS '
          f'against the 1-minute file; old code: its time over ours (above 1 = we are faster)')
    for note in notes:
        print('NOTE:', note)
    return rows


def compare_demo_eval(py, tmp, repeats, rev):
    """Whole AED_eval.py processes on the make_demo test split: this tree against the code of rev."""
    old_tree = checkout(rev, tmp / 'old')
    demo = tmp / 'demo'
    run([py, 'dataset/make_demo.py', '--out', str(demo), '--train', '0', '--test', '8', '--no-examples',
         '--no-background', '--scenes', '0'])
    ckpt = tmp / 'demo_model.pt'  # the demo's network size
    run([py, '-c', MAKE_CHECKPOINT, str(ckpt), '128', '64', '16'])
    walls, loops, maps = {'new': [], 'old': []}, {'new': [], 'old': []}, {}
    for _ in range(repeats):
        for name, tree in (('new', ROOT), ('old', old_tree)):
            report = tmp / f'{name}.json'
            _, wall = run([py, 'AED_eval.py', '--testdir', str(demo / 'test'), '--modelname', str(ckpt),
                           '--confmatrix', '', '--quiet', '--device', 'cpu', '--json', str(report)], cwd=tree)
            summary = json.loads(report.read_text())['summary']
            walls[name].append(wall)
            loops[name].append(summary['seconds'])
            maps[name] = (summary['map'], summary['accuracy'])
    if maps['new'] != maps['old']:
        raise RuntimeError(f'demo split: MAP/ACCURACY differ from {rev}: {maps}')
    new_wall, old_wall = statistics.median(walls['new']), statistics.median(walls['old'])
    new_loop, old_loop = statistics.median(loops['new']), statistics.median(loops['old'])
    return [(f'AED_eval on the demo test split (40 files), whole process', 's', new_wall, None),
            (f'  same, code of {rev}', 's', old_wall, old_wall / new_wall),
            ('AED_eval on the demo test split, testing loop only', 's', new_loop, None),
            (f'  same, code of {rev}', 's', old_loop, old_loop / new_loop)]


if __name__ == '__main__':
    main()
