"""Background classes and background mixing in training (issue 15 section 1).

SpecDataset lays event images onto background images at BACKGROUND_MIX's rate, never mixes a
background image, never changes a label, and gives the same images with any number of loader
workers. AED_train.py checks the settings, prints what the run mixes, records it in every
checkpoint, --resume restores it, and AED_test.py --events never reports the background
classes a trained checkpoint records. Training runs are tiny (64x64 images, 4 filters, 8 images
per class of conftest's demo spectrograms, `hum` standing in for a background class).
"""
import json
import math

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

import AED_test
import AED_train
import config as cfg
from helpers import stop_after
from model import data
from model.checkpoint import load_checkpoint
from model.data import SpecDataset, make_loader
from model.events import thresholds_path

W, H = 64, 32
MIX = {'prob': 0.5, 'ebr_db': (-6, 6), 'partial': 0.5}
AUG = {'roll': [0.5, (0.1, 0.1)], 'noise': [0.5, 0.01]}
TINY = ['--im-size', '64', '64', '--filters', '4', '--batch-size', '16', '--device', 'cpu', '--workers', '0']


@pytest.fixture(scope='module')
def items(tmp_path_factory):
    """24 event images of classes 1 and 2 (a band of a few rows and columns, zero elsewhere) and
    6 background images of class 0 (noise everywhere), interleaved."""
    root, rng, out = tmp_path_factory.mktemp('mixset'), np.random.default_rng(0), []
    for k in range(30):
        label = 0 if k % 5 == 0 else 1 + k % 2
        img = rng.integers(20, 80, (H, W), dtype=np.uint8) if label == 0 else np.zeros((H, W), np.uint8)
        if label:
            img[8 * label:8 * label + 6, k:k + 24] = 255
        path = root / f'{k}.png'
        path.write_bytes(cv2.imencode('.png', img)[1].tobytes())
        out.append((path, label))
    return out


@pytest.mark.parametrize('prob', [0.2, 0.5, 1.0])
def test_event_images_are_mixed_at_the_rate_background_images_never_and_labels_stay(items, prob):
    plain = SpecDataset(items, 3, (W, H), 1)
    ds = SpecDataset(items, 3, (W, H), 1, background=[0], mix={**MIX, 'prob': prob})
    mixed, draws = 0, 0
    for epoch in range(1, 11):
        ds.set_epoch(epoch)
        for i, (_, label) in enumerate(items):
            x, y, _ = ds[i]
            assert y.tolist() == np.eye(3)[label].tolist()
            changed = not torch.equal(x, plain[i][0])
            assert not (changed and label == 0)  # a background image is never mixed
            mixed, draws = mixed + changed, draws + (label != 0)
    assert abs(mixed - prob * draws) <= 4 * math.sqrt(draws * prob * (1 - prob))  # 240 draws


def test_mixing_gives_the_same_images_with_0_and_2_workers(items):
    sets = [SpecDataset(items, 3, (W, H), 1, AUG, seed=7, background=[0], mix=MIX) for _ in range(3)]
    sets[2].mix = None  # the same augmentation, unmixed
    loaders = [make_loader(ds, 8, workers, DistributedSampler(ds, 1, 0, shuffle=True, seed=7))
               for ds, workers in zip(sets, (0, 2, 0))]
    seen = []
    for epoch in (1, 2):  # epoch 2: set_epoch reaches the persistent workers
        batches = []
        for ds, loader in zip(sets, loaders):
            ds.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            batches.append(torch.cat([x for x, _, _ in loader]))
        assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])
        seen.append(batches[0])
    assert not torch.equal(seen[0], seen[1])


# ------------------------------------------------------------------ AED_train.py

@pytest.fixture(autouse=True)
def small(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 8)
    monkeypatch.setattr(cfg, 'SNAPSHOT_EPOCHS', [-1])
    monkeypatch.setattr(cfg, 'DEVICE', 'cpu')
    monkeypatch.setattr(cfg, 'TRAIN_WORKERS', 0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mixes(monkeypatch):
    """The number of images model.data mixes, counted as it mixes them."""
    calls, real = [], data.mix_background
    monkeypatch.setattr(data, 'mix_background', lambda *a: calls.append(1) or real(*a))
    return calls


def train(specs, run, *extra, epochs=2):
    argv = ['--dataset', str(specs), '--model-path', str(run / 'models'), '--log-path', str(run / 'logs'),
            '--confmatrix-path', str(run / 'cm'), '--epochs', str(epochs), *TINY, *extra]
    return AED_train.main(argv)


def warnings(err):
    return [line for line in err.splitlines() if line.startswith('WARNING')]


def test_training_mixes_every_event_training_image_and_records_how(demo_data, tmp_path, monkeypatch, mixes,
                                                                   capsys):
    monkeypatch.setattr(cfg, 'VAL_SPLIT', 0.5)  # background images in validation too
    run = tmp_path / 'run'
    specs = demo_data / 'train' / 'spec'
    assert train(specs, run, '--background-classes', 'hum', '--background-mix', '1', '--run-name', 'Mix') == 0
    out = capsys.readouterr().out.splitlines()
    counts = load_checkpoint(run / 'models' / 'AED_Mix_model_best.pt')['training']['class_counts']
    assert counts['val']['hum'] > 0 and sum(counts['val'].values()) > counts['val']['hum']
    counts = counts['train']
    # each event training image once per epoch: no background image, no validation image
    assert len(mixes) == 2 * (sum(counts.values()) - counts['hum'])
    assert (f"BACKGROUND MIX: 1.0 of event images onto {counts['hum']} images of hum, EBR -6 to 6 dB, "
            f"0.5 of them in part of the window") in out
    for name in ('model_best', 'model_epoch_1', 'last'):
        ckpt = load_checkpoint(run / 'models' / f'AED_Mix_{name}.pt')
        assert ckpt['background_classes'] == ['hum'] == ckpt['training']['background_classes']
        assert ckpt['training']['background_mix'] == {'prob': 1.0, 'ebr_db': [-6, 6], 'partial': 0.5}


def test_without_background_images_mixing_is_off_or_an_error_if_asked(demo_data, tmp_path, mixes, capsys):
    specs = demo_data / 'train' / 'spec'  # no class 'background' (BACKGROUND_CLASSES)
    assert train(specs, tmp_path / 'run', '--run-name', 'NoBg', epochs=1) == 0
    captured = capsys.readouterr()
    assert warnings(captured.err) == []  # a classification data set needs no background class
    assert ('BACKGROUND MIX: off (no training image of a background class (background))'
            in captured.out.splitlines())
    assert load_checkpoint(tmp_path / 'run' / 'models' / 'AED_NoBg_last.pt')['background_classes'] == []
    assert not mixes
    asked = "ERROR: BACKGROUND_MIX 'prob' (--background-mix) is 0.5, but there is no training image"
    typo = f'ERROR: BACKGROUND_CLASSES (--background-classes): no class folder humm in {specs} (its classes'
    for flags, error in ((['--background-mix', '0.5'], asked),
                         (['--background-classes', 'hum', 'humm'], typo)):
        with pytest.raises(SystemExit) as e:
            train(specs, tmp_path / 'bad', *flags)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(error)
        assert not (tmp_path / 'bad').exists()


def test_resume_restores_background_mix_and_classes(demo_data, tmp_path, monkeypatch, mixes, capsys):
    run = tmp_path / 'run'
    with monkeypatch.context() as m:
        stop_after(m, AED_train, 1)
        assert train(demo_data / 'train' / 'spec', run, '--background-classes', 'hum',
                     '--background-mix', '0.3', '--run-name', 'Cut') == 130
    last = run / 'models' / 'AED_Cut_last.pt'
    capsys.readouterr()
    monkeypatch.setattr(cfg, 'BACKGROUND_MIX', {'prob': 0.9, 'ebr_db': (0, 3), 'partial': 0.0})
    mixes.clear()
    assert AED_train.main(['--resume', str(last)]) == 0
    captured = capsys.readouterr()
    run_mix = {'prob': 0.3, 'ebr_db': [-6, 6], 'partial': 0.5}
    assert warnings(captured.err) == [f"WARNING: config.py's BACKGROUND_MIX {cfg.BACKGROUND_MIX!r} differs "
                                      f"from the resumed run's {run_mix!r}; the run's is kept"]
    assert 'BACKGROUND MIX: 0.3 of event images onto' in captured.out and mixes
    ckpt = load_checkpoint(last)
    assert ckpt['epoch'] == 2 and ckpt['training']['background_mix'] == run_mix
    assert ckpt['background_classes'] == ['hum'] == ckpt['training']['background_classes']

    # the flag sets the probability alone, with a warning; the rest stays the run's
    mixes.clear()
    assert AED_train.main(['--resume', str(last), '--epochs', '3', '--background-mix', '0']) == 0
    captured = capsys.readouterr()
    assert (f"WARNING: --background-mix {dict(run_mix, prob=0.0)!r} overrides the resumed run's {run_mix!r}"
            in warnings(captured.err))
    assert 'BACKGROUND MIX: off (background classes: hum)' in captured.out.splitlines() and not mixes
    assert load_checkpoint(last)['training']['background_mix'] == dict(run_mix, prob=0.0)


def test_events_never_report_the_background_classes_a_trained_checkpoint_records(demo_data, tmp_path, capsys):
    run = tmp_path / 'run'
    assert train(demo_data / 'train' / 'spec', run, '--background-classes', 'hum', '--run-name', 'Bg') == 0
    files = [str(p) for p in sorted((demo_data / 'test').glob('*/*.wav'))]
    capsys.readouterr()

    def labels(*extra):
        argv = ['--filenames', *files, '--modelname', str(run / 'models' / 'AED_Bg_model_best.pt'),
                '--events', '--json', '--threshold', '0.02', '--device', 'cpu', *extra]
        assert AED_test.main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        return {event['label'] for line in lines for event in json.loads(line)['events']}

    assert 'hum' in labels('--background-classes')  # hum fires once it is no background class
    found = labels()  # the checkpoint's: hum
    assert found and 'hum' not in found


def test_retraining_removes_the_thresholds_tuned_for_the_replaced_model(demo_data, tmp_path, capsys):
    run = tmp_path / 'run'
    sidecar = thresholds_path(run / 'models' / 'AED_Re_model_best.pt')
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text('{"thresholds": {"default": 0.3}}\n')
    assert train(demo_data / 'train' / 'spec', run, '--background-classes', 'hum', '--run-name', 'Re',
                 epochs=1) == 0
    assert not sidecar.exists()
    assert warnings(capsys.readouterr().err) == [
        f'WARNING: {sidecar}: thresholds tuned for the model this one replaced, removed']
