"""Multi-process training: 2 CPU processes with gloo, as torchrun would start them.

Each process gets the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and runs AED_train.train for one tiny
epoch; both must end with identical weights and batch-norm statistics, and
only rank 0 may print or write files.
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


def make_images(root, per_class=12):
    """Two easily told apart classes of 64x64 grey PNGs: horizontal vs vertical stripes."""
    rng = np.random.default_rng(0)
    for c, axis in (('horizontal', 0), ('vertical', 1)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            stripes = (np.arange(64) // rng.integers(2, 8)) % 2 * 200
            img = np.repeat(stripes[:, None] if axis == 0 else stripes[None, :], 64, axis=1 - axis)
            img = np.clip(img + rng.integers(0, 50, (64, 64)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / c / f'{c}_{i}.png'), img)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def worker(rank, world, port, root):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg.LOG_PATH, cfg.CONFMATRIX_PATH = str(root / 'logs'), str(root / 'confmatrix')
    args = AED_train.parse_args(['--dataset', str(root / 'data'), '--model-path', str(root / 'models'),
                                 '--epochs', '1', '--im-size', '64', '64', '--filters', '4',
                                 '--batch-size', '4', '--workers', '0', '--device', 'cpu'])
    real, batches = AED_train.train_epoch, []

    def train_epoch(*a, **kw):
        loss, n, bad = real(*a, **kw)
        batches.append(n)
        return loss, n, bad
    AED_train.train_epoch = train_epoch  # a fresh process: nothing to restore
    result = AED_train.train(args)
    torch.save({'state': result['net'].state_dict(), 'batches': batches}, root / f'rank{rank}.pt')


def test_two_cpu_processes_end_with_identical_weights(tmp_path, capfd):
    make_images(tmp_path / 'data')
    # a hung process group must fail this test, not stall the whole suite
    context = mp.start_processes(worker, args=(2, free_port(), tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail('the 2-process run did not finish within 120 s')
    ra = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    rb = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    # 22 training images, 11 per process in batches of 4: each rank saw only its
    # own share, so equal weights mean the gradients were averaged
    assert ra['batches'] == rb['batches'] == [3]
    a, b = ra['state'], rb['state']
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # training really changed the weights, and rank 0 saved what both hold
    best = load_checkpoint(tmp_path / 'models' / 'AED_Example_Run_model_best.pt')
    for key in a:
        assert torch.equal(best['state_dict'][key], a[key]), key
    assert any(bool((a[k] != 0).any()) for k in a if k.endswith('running_mean'))
    out = capfd.readouterr().out
    assert out.count('TRAINING DONE!') == 1 and out.count('EPOCH 1 TRAIN LOSS:') == 1
    assert '2 PROCESS(ES)' in out
    assert (tmp_path / 'logs' / 'Example_Run.csv').is_file()
