"""Multi-process training: 2 CPU processes with gloo, as torchrun would start them.

Each process gets the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and runs AED_train.train on tiny
settings; both must end with identical weights and batch-norm statistics,
only rank 0 may print or write files, an unreadable image must drop only
itself, a batch left empty on one process must be skipped by all (not hang),
and a resumed run must give every process back its own random state. A hung process group fails the test after
a timeout instead of stalling the suite.
"""
import os
import socket
import time

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import AED_train
import config as cfg
from model.checkpoint import load_checkpoint

TINY = ['--im-size', '64', '64', '--filters', '4', '--workers', '0', '--device', 'cpu']


def make_images(root, per_class=12, corrupt=0):
    """Two easily told apart classes of 64x64 grey PNGs: horizontal vs vertical stripes,
    plus `corrupt` unreadable files per class."""
    rng = np.random.default_rng(0)
    for c, axis in (('horizontal', 0), ('vertical', 1)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            stripes = (np.arange(64) // rng.integers(2, 8)) % 2 * 200
            img = np.repeat(stripes[:, None] if axis == 0 else stripes[None, :], 64, axis=1 - axis)
            img = np.clip(img + rng.integers(0, 50, (64, 64)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / c / f'{c}_{i}.png'), img)
        for i in range(corrupt):
            (root / c / f'{c}_broken_{i}.png').write_bytes(b'not a png')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def worker(rank, world, port, root, argv, settings, tag, hole):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg.LOG_PATH, cfg.CONFMATRIX_PATH = str(root / 'logs'), str(root / 'confmatrix')
    for name, value in settings.items():
        setattr(cfg, name, value)
    args = AED_train.parse_args(['--dataset', str(root / 'data'), '--model-path', str(root / 'models')]
                                + TINY + argv)
    real, batches, sizes = AED_train.train_epoch, [], []

    def train_epoch(net, loader, *a, **kw):
        sizes.append([])

        def recorded():  # the batch sizes this process loaded, before any skip
            for x, y, n_bad in loader:
                if (rank, len(sizes), len(sizes[-1])) == hole:  # a batch left with no image
                    x, y = x[:0], y[:0]
                sizes[-1].append(x.shape[0])
                yield x, y, n_bad
        loss, n, bad = real(net, recorded(), *a, **kw)
        batches.append(n)
        return loss, n, bad
    AED_train.train_epoch = train_epoch  # a fresh process: nothing to restore
    result = AED_train.train(args)
    torch.save({'state': result['net'].state_dict(), 'batches': batches, 'sizes': sizes,
                'rng': torch.get_rng_state()}, root / f'{tag}_rank{rank}.pt')


def run_two(root, argv, settings=None, tag='run', timeout=120, hole=None):
    """Train in 2 processes; returns the two ranks' records (fails after timeout s).
    hole: (rank, epoch, batch), counted from 1, 1 and 0: that process's batch loses its images."""
    context = mp.start_processes(worker, args=(2, free_port(), root, argv, settings or {}, tag, hole),
                                 nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f'the 2-process run did not finish within {timeout} s')
    return [torch.load(root / f'{tag}_rank{r}.pt', weights_only=True) for r in (0, 1)]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_cpu_processes_end_with_identical_weights(tmp_path, capfd):
    make_images(tmp_path / 'data')
    ra, rb = run_two(tmp_path, ['--epochs', '1', '--batch-size', '4'])
    # 22 training images, 11 per process in batches of 4: each rank saw only its
    # own share, so equal weights mean the gradients were averaged
    assert ra['batches'] == rb['batches'] == [3]
    a, b = ra['state'], rb['state']
    assert_same_state(a, b)
    # training really changed the weights, and rank 0 saved what both hold
    best = load_checkpoint(tmp_path / 'models' / 'AED_Example_Run_model_best.pt')
    assert_same_state(best['state_dict'], a)
    assert any(bool((a[k] != 0).any()) for k in a if k.endswith('running_mean'))
    out = capfd.readouterr().out
    assert out.count('TRAINING DONE!') == 1 and out.count('EPOCH 1 TRAIN LOSS:') == 1
    assert '2 PROCESS(ES)' in out
    assert (tmp_path / 'logs' / 'Example_Run.csv').is_file()


def test_an_unreadable_image_drops_only_itself_and_an_empty_batch_is_skipped_by_all(tmp_path, capfd):
    # 3 unreadable files of 11 per class, batches of 2: a readable image takes each one's
    # place (this used to discard whole batches, and all of epoch 2). In epoch 2 the second
    # batch of process 1 is left with no image: both processes skip it together, or their
    # gradient all-reduces fall out of step and one waits forever.
    make_images(tmp_path / 'data', per_class=8, corrupt=3)
    ra, rb = run_two(tmp_path, ['--epochs', '2', '--batch-size', '2'], timeout=60, hole=(1, 2, 1))
    assert ra['sizes'] == [[2] * 5] * 2 and rb['sizes'] == [[2] * 5, [2, 0, 2, 2, 2]]
    assert ra['batches'] == rb['batches'] == [5, 4]
    assert_same_state(ra['state'], rb['state'])
    err = capfd.readouterr().err
    assert 'ERROR' not in err and '_broken_' in err and 'not a readable image, skipped' in err


def test_resume_gives_each_process_its_own_random_state(tmp_path):
    make_images(tmp_path / 'data')
    # the rate of epoch 2 does not depend on the number of epochs (see test_train)
    settings = {'LEARNING_RATE': {0: 0.002, 1: 0.001}, 'SNAPSHOT_EPOCHS': []}
    common = ['--dataset', str(tmp_path / 'data'), '--batch-size', '4', '--deterministic']
    straight = run_two(tmp_path / 'a', ['--epochs', '2', '--run-name', 'Straight'] + common,
                       settings, tag='straight')
    run_two(tmp_path / 'b', ['--epochs', '1', '--run-name', 'Split'] + common, settings, tag='first')
    last = tmp_path / 'b' / 'models' / 'AED_Split_last.pt'
    states = load_checkpoint(last)['rng']
    assert len(states) == 2 and not torch.equal(states[0]['torch'], states[1]['torch'])
    resumed = run_two(tmp_path / 'b', ['--epochs', '2', '--resume', str(last)] + common,
                      settings, tag='resumed')
    for rank in (0, 1):
        # dropout drew the same masks on each process as in the uninterrupted run
        assert torch.equal(resumed[rank]['rng'], straight[rank]['rng']), rank
    assert not torch.equal(resumed[0]['rng'], resumed[1]['rng'])
    assert_same_state(resumed[0]['state'], straight[0]['state'])
