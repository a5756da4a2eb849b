"""Shared fixtures: a tiny demo dataset and a tiny trained checkpoint, made once per session."""
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import make_demo

ROOT = Path(__file__).resolve().parents[1]

# Small enough to train in about a second on two CPU cores
TINY_IM_SIZE = (128, 64)  # (width, height)
TINY_FILTERS = 4
EPOCHS = 12


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """make_demo.py's five event classes (4 train and 2 test files each, no background class
    or scenes: the detection tests make their own) plus their spectrogram PNGs."""
    import AED_spec
    root = tmp_path_factory.mktemp('demo')
    make_demo.main(['--out', str(root), '--train', '4', '--test', '2', '--example-seconds', '4',
                    '--no-background', '--scenes', '0'])
    AED_spec.main(['--src', str(root / 'train' / 'wav'), '--dst', str(root / 'train' / 'spec'),
                   '--workers', '1'])
    return root


@pytest.fixture(scope='session')
def tiny_model(demo_data, tmp_path_factory):
    """Path of a checkpoint of a tiny AEDNet trained for a few steps on the demo spectrograms."""
    from model.checkpoint import save_checkpoint
    from model.data import load_image
    from model.net import AEDNet

    spec_dir = demo_data / 'train' / 'spec'
    classes = sorted(p.name for p in spec_dir.iterdir() if p.is_dir())
    images, targets = [], []
    for k, name in enumerate(classes):
        for png in sorted((spec_dir / name).glob('*.png')):
            images.append(load_image(png, TINY_IM_SIZE, 1))
            targets.append(k)
    x = torch.from_numpy(np.stack(images))  # (N, 1, H, W)
    y = torch.tensor(targets)

    torch.manual_seed(0)
    net = AEDNet(len(classes), TINY_IM_SIZE, 1, TINY_FILTERS, dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread is as fast and immune to a busy machine
    try:
        for _ in range(EPOCHS):
            for idx in torch.randperm(len(x)).split(16):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp('model') / 'tiny.pt'
    meta = {'classes': classes, 'run_name': 'tiny', 'epoch': 1, 'im_size': TINY_IM_SIZE,
            'im_dim': 1, 'filters': TINY_FILTERS, 'dropout': 0.0, 'nonlinearity': 'relu',
            'multi_label': False,
            'spec': {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}}
    save_checkpoint(path, net, meta)
    return path
