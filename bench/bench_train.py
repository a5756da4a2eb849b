"""Training throughput: the full data pipeline against synthetic in-memory batches.

Both modes run the same network, batch size, optimiser and training step
(model.training.train_step, as AED_train.py uses it) for the same number of
steps, and report specs/s from the median step time:

  full       spectrogram PNGs on disk (dataset/make_demo.py audio turned into
             PNGs by AED_spec.py), SpecDataset with IM_AUGMENTATION, DataLoader
             workers, pinned memory on CUDA, copy to the device
  synthetic  one random batch held in (pinned) host memory, copied to the
             device every step: the same step with loading, decoding and
             augmentation taken away

The ratio full / synthetic says how much the input pipeline costs (goal >= 0.90).
Rounds alternate the two modes so machine noise hits both alike. Step times
come from CUDA events on a GPU (no host sync inside the loop), wall clock on a CPU.

--epochs-overhead instead runs AED_train.py itself for --epochs epochs (demo
data, demo preset unless --size/--filters say otherwise) and reports, side by
side, the time spent in training steps and the whole run's wall time; their
ratio is what an epoch costs beyond its steps (goal <= 1.3 on a CPU). It also
reports how long the training loop itself spent per epoch in save_epoch (the
log, plots and checkpoints, or with the background writer handing them over):
the part that stalls a GPU.

    python -m bench.bench_train
    python -m bench.bench_train --steps 4 --batch 16 --workers 2
    python -m bench.bench_train --device cuda --amp off --steps 50 --workers 8
    python -m bench.bench_train --epochs-overhead --epochs 20 --size 128 64 --filters 16
"""
import argparse
import contextlib
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


class StepClock:
    """Durations between consecutive mark() calls; CUDA events avoid syncing every step."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'
        self.marks = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self):
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def make_specs(folder, images):
    """At least `images` spectrogram PNGs from demo audio (4 s files give 4 specs each)."""
    import AED_spec
    spec = importlib.util.spec_from_file_location('make_demo', ROOT / 'dataset' / 'make_demo.py')
    make_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_demo)
    per_class = max(2, -(-images // (5 * 4)))
    # their per-file lines would bury the table
    with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):
        make_demo.main(['--out', str(folder), '--train', str(per_class), '--test', '1', '--no-examples'])
        AED_spec.main(['--src', str(folder / 'train' / 'wav'), '--dst', str(folder / 'spec')])
    return folder / 'spec'


def endless(loader, dataset):
    """Batches of loader, epoch after epoch."""
    epoch = 0
    while True:
        epoch += 1
        dataset.set_epoch(epoch)
        yield from loader


def run_steps(net, optimizer, precision, batches, steps, warmup, device, channels_last):
    """warmup + steps training steps on an iterator of (x, y, n_bad); returns step durations."""
    from model.training import to_device, train_step
    clock = StepClock(device)
    for i in range(warmup + steps + 1):
        x, y, _ = next(batches)
        x = to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        train_step(net, x, y, optimizer, precision, multi_label=False)
        if i >= warmup:  # the first mark closes the warm-up, each later one a timed step
            clock.mark()
    return clock.durations()


def synthetic(x, y):
    while True:
        yield x, y, 0


def epochs_overhead(args, data, out):
    """One AED_train.py run; returns (seconds in training steps, whole-run wall seconds,
    seconds the training loop spent in save_epoch: the epoch's files, or handing them over)."""
    import AED_train
    import config as cfg
    import model.training as training
    from model.training import clock, select_device

    device = select_device(args.device)
    real, spent = training.train_step, []
    real_save, saving = AED_train.save_epoch, []

    def timed_step(*a, **kw):
        start = clock(device)
        loss = real(*a, **kw)
        spent.append(clock(device) - start)
        return loss

    def timed_save(*a, **kw):
        start = time.perf_counter()
        real_save(*a, **kw)
        saving.append(time.perf_counter() - start)
    saved = {name: getattr(cfg, name) for name in ('LOG_PATH', 'CONFMATRIX_PATH', 'MIXED_PRECISION')}
    cfg.LOG_PATH, cfg.CONFMATRIX_PATH = str(out / 'logs'), str(out / 'confmatrix')
    cfg.MIXED_PRECISION = args.amp == 'on'
    training.train_step, AED_train.save_epoch = timed_step, timed_save
    argv = ['--dataset', str(data), '--model-path', str(out / 'models'), '--run-name', 'Bench',
            '--epochs', str(args.epochs), '--batch-size', str(args.batch), '--workers', str(args.workers),
            '--im-size', *map(str, args.size), '--filters', str(args.filters), '--device', args.device]
    try:
        with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):
            start = time.perf_counter()
            AED_train.main(argv + (['--compile'] if args.compile else []))
            wall = time.perf_counter() - start
    finally:
        training.train_step, AED_train.save_epoch = real, real_save
        for name, value in saved.items():
            setattr(cfg, name, value)
    return sum(spent), wall, sum(saving)


def main_epochs_overhead(args):
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_specs(Path(tmp) / 'demo', 480)
        for r in range(args.rounds or 1):
            runs.append(epochs_overhead(args, data, Path(tmp) / f'run{r}'))
    steps = statistics.median(s for s, _, _ in runs)
    wall = statistics.median(w for _, w, _ in runs)
    saving = statistics.median(f for _, _, f in runs) / args.epochs
    print(f'\n{args.device}, AED_train.py, {args.size[0]}x{args.size[1]} images, {args.filters} filters, '
          f'batch {args.batch}, {args.workers} workers, {args.epochs} epochs'
          f'{", --compile" if args.compile else ""}; median of {len(runs)} run(s)')
    print('| steps only (s) | whole run (s) | outside steps per epoch (s) | saving files per epoch (s) '
          '| whole / steps |')
    print('|---:|---:|---:|---:|---:|')
    print(f'| {steps:.1f} | {wall:.1f} | {(wall - steps) / args.epochs:.2f} | {saving:.3f} '
          f'| {wall / steps:.2f} (goal <= 1.3) |')
    return steps, wall


def main(argv=None):
    import config as cfg
    from torch.utils.data import RandomSampler

    from model.data import SpecDataset, make_loader, parse_dataset
    from model.net import AEDNet
    from model.training import Precision, configure_backend, make_optimizer, select_device

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--size', type=int, nargs=2, metavar=('W', 'H'), default=None,
                   help=f'default {cfg.IM_SIZE[0]} {cfg.IM_SIZE[1]}; 128 64 (the demo preset) '
                        f'with --epochs-overhead')
    p.add_argument('--filters', type=int, default=None,
                   help=f'default {cfg.FILTERS}; 16 (the demo preset) with --epochs-overhead')
    p.add_argument('--batch', type=int, default=cfg.BATCH_SIZE)
    p.add_argument('--steps', type=int, default=None,
                   help='timed steps per mode and round (default 40 on a GPU, 4 on a CPU)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 5 GPU, 1 CPU)')
    p.add_argument('--rounds', type=int, default=None,
                   help='alternations of the two modes (default 2 GPU, 1 CPU)')
    p.add_argument('--workers', type=int, default=cfg.TRAIN_WORKERS, help='DataLoader worker processes')
    p.add_argument('--device', default=cfg.DEVICE)
    p.add_argument('--amp', choices=('on', 'off'), default='on', help='mixed precision on CUDA')
    p.add_argument('--data', type=Path, default=None,
                   help='existing spectrogram folder (default: make demo PNGs in a temporary folder)')
    p.add_argument('--epochs-overhead', action='store_true',
                   help='time a whole AED_train.py run against its training steps')
    p.add_argument('--epochs', type=int, default=20, help='epochs of an --epochs-overhead run')
    p.add_argument('--compile', action='store_true', help='--epochs-overhead: train with --compile')
    args = p.parse_args(argv)
    if args.epochs_overhead:
        args.size, args.filters = args.size or [128, 64], args.filters or 16
        return main_epochs_overhead(args)
    args.size, args.filters = args.size or list(cfg.IM_SIZE), args.filters or cfg.FILTERS

    device = select_device(args.device)
    gpu = device.type == 'cuda'
    steps = args.steps or (40 if gpu else 4)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    rounds = args.rounds or (2 if gpu else 1)
    configure_backend(device, deterministic=False)
    torch.manual_seed(cfg.RANDOM_SEED)

    with tempfile.TemporaryDirectory() as tmp:
        # enough distinct files that a round never reads one twice (less with huge step counts)
        data = args.data or make_specs(Path(tmp), min(4000, (warmup + steps + 2) * args.batch))
        classes, items, _, _ = parse_dataset(data, val_split=0)
        dataset = SpecDataset(items, len(classes), tuple(args.size), cfg.IM_DIM,
                              cfg.IM_AUGMENTATION or None, seed=cfg.RANDOM_SEED)
        loader = make_loader(dataset, args.batch, args.workers, RandomSampler(dataset), pin_memory=gpu,
                             drop_last=True)

        net = AEDNet(len(classes), tuple(args.size), cfg.IM_DIM, args.filters)
        channels_last = gpu
        net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
        optimizer = make_optimizer(cfg.OPTIMIZER, net.parameters(), 0.001)
        precision = Precision(device, args.amp == 'on')

        x = torch.rand(args.batch, cfg.IM_DIM, args.size[1], args.size[0])
        y = torch.nn.functional.one_hot(torch.randint(0, len(classes), (args.batch,)),
                                        len(classes)).float()
        if gpu:
            x, y = x.pin_memory(), y.pin_memory()

        times = {'full': [], 'synthetic': []}
        full_batches = endless(loader, dataset)
        for _ in range(rounds):
            times['full'] += run_steps(net, optimizer, precision, full_batches, steps, warmup,
                                       device, channels_last)
            times['synthetic'] += run_steps(net, optimizer, precision, synthetic(x, y), steps, warmup,
                                            device, channels_last)
        del full_batches, loader

    rows = []
    for mode in ('full', 'synthetic'):
        med = statistics.median(times[mode])
        rows.append((mode, len(times[mode]), med * 1000, args.batch / med))
    ratio = rows[0][3] / rows[1][3]
    rows.append(('ratio full / synthetic', None, None, ratio))

    name = torch.cuda.get_device_name(device) if gpu else 'CPU'
    print(f'\n{name} ({precision}), {args.size[0]}x{args.size[1]} images, {args.filters} filters, '
          f'batch {args.batch}, {args.workers} workers, {rounds} round(s) x {steps} steps '
          f'per mode after {warmup} warm-up; median step time')
    print('| mode | steps | ms/step | specs/s |')
    print('|---|---:|---:|---:|')
    for mode, n, ms, rate in rows[:2]:
        print(f'| {mode} | {n} | {ms:.1f} | {rate:.1f} |')
    print(f'| ratio full / synthetic | | | {ratio:.3f} (goal >= 0.90) |')
    return rows


if __name__ == '__main__':
    main()
