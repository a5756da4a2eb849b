"""AED_train.py and model/training.py: schedule, loss, network, saving, resuming, bad input.

Training runs use tiny settings (64x64 images, 4 filters, 1-3 epochs) on the
spectrograms that conftest's demo_data makes once with dataset/make_demo.py and AED_spec.py.
Every output goes under tmp_path.
"""
import math
import re
import shutil

import numpy as np
import pytest
import torch

import AED_train
import config as cfg
from model.checkpoint import detached_copy, load_checkpoint, save_checkpoint
from model.net import AEDNet, count_params, weighted_layers
from model.session import load_model
from model.training import (Precision, accuracy, compute_loss, l2_penalty, learning_rate, make_optimizer,
                            percent, plot_training_curves, select_device, write_epoch_log)

TINY = ['--im-size', '64', '64', '--filters', '4', '--batch-size', '16', '--device', 'cpu']


@pytest.fixture(autouse=True)
def quiet_torch():
    """One thread (tiny models; no spin-waiting against other load) and no
    leftover deterministic mode from a --deterministic run."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture(scope='module')
def specs(demo_data):
    """80 spectrogram PNGs of 5 classes: make_demo.py audio through AED_spec.py (conftest)."""
    return demo_data / 'train' / 'spec'


@pytest.fixture
def out(tmp_path, monkeypatch):
    """Logs and confusion matrices go under tmp_path; returns the folder."""
    monkeypatch.setattr(cfg, 'LOG_PATH', str(tmp_path / 'logs'))
    monkeypatch.setattr(cfg, 'CONFMATRIX_PATH', str(tmp_path / 'confmatrix'))
    monkeypatch.setattr(cfg, 'SNAPSHOT_EPOCHS', [-1])
    return tmp_path


def train_args(dataset, out, *extra, epochs=2, workers=0):
    return (['--dataset', str(dataset), '--model-path', str(out / 'models'), '--epochs', str(epochs),
             '--workers', str(workers)] + TINY + list(extra))


def subset(specs, dst, classes, per_class=None):
    """Copy some class folders (optionally only the first files) into dst."""
    for c in classes:
        files = sorted((specs / c).glob('*.png'))[:per_class]
        (dst / c).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dst / c / f.name)
    return dst


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_plot(path, width, height):
    """path is a PNG of width x height pixels with something drawn on it."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f'{path} is not a readable image'
    assert img.shape[:2] == (height, width)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    drawn = (img < 250).any(axis=2).mean()  # not white
    assert len(colours) > 10 and 0.02 < drawn < 0.9, (len(colours), drawn)


def error_of(excinfo):
    msg = str(excinfo.value.code)
    assert msg.startswith('ERROR: ') and '\n' not in msg, msg
    return msg


# ------------------------------------------------------------------ network

def test_parameter_count_at_20_classes():
    net = AEDNet(20)
    assert count_params(net) == 23_456_724
    assert weighted_layers(net) == 8


@pytest.mark.parametrize('im_size', [(64, 64), (128, 64), (256, 128), (512, 256)])
def test_forward_shape(im_size):
    net = AEDNet(7, im_size, 1, 4).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, im_size[1], im_size[0]))
    assert y.shape == (2, 7)


# ------------------------------------------------------------------ pure helpers

def test_learning_rate_descent_sorted_keys():
    sched = {55: 0.000001, 0: 0.001}  # keys deliberately out of order (defect 12)
    assert learning_rate(sched, 1, 55, True) == pytest.approx(0.001)
    # epoch 12 reads the curve at 11: 0.001 + (0.000001 - 0.001) * 11 / 55
    assert learning_rate(sched, 12, 55, True) == pytest.approx(0.0008002)
    assert learning_rate(sched, 55, 55, True) == pytest.approx(0.001 - 0.000999 * 54 / 55)
    # the last rate is carried on to EPOCHS
    sched = {10: 0.001, 0: 0.01}
    assert learning_rate(sched, 6, 20, True) == pytest.approx(0.0055)
    assert learning_rate(sched, 16, 20, True) == pytest.approx(0.001)
    # evaluated at max(first key, epoch - 1)
    assert learning_rate({5: 0.1, 10: 0.2}, 1, 10, True) == pytest.approx(0.1)
    assert learning_rate({5: 0.1, 10: 0.2}, 9, 10, True) == pytest.approx(0.16)
    # a run shorter than the schedule reaches the last rate at its own last epoch,
    # as the original's (EPOCHS, last rate) point did: 0.001 + (1e-6 - 0.001) * 9 / 10
    assert learning_rate({0: 0.001, 55: 0.000001}, 10, 10, True) == pytest.approx(0.0001009)


def test_learning_rate_steps():
    sched = {20: 0.0001, 0: 0.001, 10: 0.0005}
    assert [learning_rate(sched, e, 30, False) for e in (1, 9, 10, 15, 20, 30)] == \
        [0.001, 0.001, 0.0005, 0.0005, 0.0001, 0.0001]
    assert learning_rate({5: 0.1, 10: 0.01}, 1, 20, False) == 0.1


def test_loss_single_and_multi_label():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))) + math.log(1 / 3)) / 2
    assert compute_loss(logits, targets, False).item() == pytest.approx(expected, rel=1e-6)
    # multi-label: sigmoid, clipped to [1e-7, 1 - 1e-7], mean over all 6 elements
    logits = torch.tensor([[100.0, -100.0, 0.0], [0.0, 100.0, 0.0]])
    targets = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    upper = float(np.float32(1 - 1e-7))  # the clip bound as float32 holds it
    terms = [-math.log(1 - upper), 0.0, math.log(2), math.log(2), 0.0, math.log(2)]
    assert compute_loss(logits, targets, True).item() == pytest.approx(sum(terms) / 6, rel=1e-4)


def test_l2_penalty_counts_conv_and_dense_weights_only():
    net = AEDNet(3, (64, 64), 1, 2)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(7.0)  # batch-norm scales/shifts and the output bias
        n = 0
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.fill_(1.0)
                n += m.weight.numel()
    assert l2_penalty(net).item() == pytest.approx(n)


def test_accuracy_top1_and_binary():
    logits = torch.tensor([[3.0, 1.0, -2.0], [0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert accuracy(logits, targets).item() == pytest.approx(2 / 3)
    # sigmoid > 0.5 where logit > 0: rows give [T, T, F], [F, T, T], [T, F, F]
    multi = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert accuracy(logits, multi, binary=True).item() == pytest.approx(7 / 9)


def test_optimizer_factory():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = make_optimizer('adam', params, 0.01)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]['betas'] == (0.5, 0.999)
    sgd = make_optimizer('nesterov', params, 0.01)
    assert sgd.param_groups[0]['momentum'] == 0.9 and sgd.param_groups[0]['nesterov']


@pytest.mark.parametrize('native, emulated, dtype', [(True, True, torch.bfloat16),
                                                      (False, True, torch.float16),
                                                      (False, False, torch.float16)])
def test_precision_uses_bf16_only_where_the_gpu_has_it_natively(monkeypatch, native, emulated, dtype):
    def is_bf16_supported(including_emulation=True):
        return native or (including_emulation and emulated)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', is_bf16_supported)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # lets GradScaler switch on
    precision = Precision(torch.device('cuda'))
    assert precision.dtype == dtype
    # fp16 needs loss scaling, bf16 does not
    assert precision.scaler.is_enabled() == (dtype == torch.float16)
    assert str(precision) == ('bf16 autocast' if native else 'fp16 autocast + GradScaler')
    cpu = Precision(torch.device('cpu'))
    assert cpu.dtype is None and not cpu.scaler.is_enabled() and str(cpu) == 'float32'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU fallback')
def test_select_device_without_gpu():
    if not torch.backends.mps.is_available():
        assert select_device('auto').type == 'cpu'
    assert select_device('cpu').type == 'cpu'
    with pytest.raises(ValueError, match='CUDA'):
        select_device('cuda')


def test_epoch_log_and_curves(tmp_path):
    rows = [{'epoch': 1, 'train_loss': 1.5, 'val_loss': 1.2, 'val_accuracy': 40.0, 'lr': 0.001,
             'time_s': 2.0, 'bad_images': 0},
            {'epoch': 2, 'train_loss': 1.1, 'val_loss': None, 'val_accuracy': None, 'lr': 0.0005,
             'time_s': 2.1, 'bad_images': 1}]
    path = tmp_path / 'logs' / 'run.csv'
    write_epoch_log(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == 'epoch,train_loss,val_loss,val_accuracy,lr,time_s,bad_images'
    assert lines[1] == '1,1.5,1.2,40.0,0.001,2.0,0' and lines[2] == '2,1.1,,,0.0005,2.1,1'
    png = plot_training_curves(rows, tmp_path / 'curves.png', 'run')
    assert_plot(png, 1000, 400)  # figsize (10, 4) at 100 dpi


# ------------------------------------------------------------------ training runs

EPOCH_LINE = re.compile(r'^EPOCH (\d+) TRAIN LOSS: [\d.]+ VAL LOSS: [\d.]+ VAL ACCURACY: [\d.]+ % '
                        r'LR: [\d.e-]+ TIME: [\d.]+ s$', re.M)


def test_end_to_end_tiny_run(specs, out, capsys):
    assert AED_train.main(train_args(specs, out, '--run-name', 'Tiny', workers=1)) == 0
    stdout = capsys.readouterr().out
    for line in ('CLASSES: 5', 'TRAINING IMAGES: 72', 'VALIDATION IMAGES: 8',
                 'MODEL HAS 8 WEIGHTED LAYERS', f'MODEL HAS {count_params(AEDNet(5, (64, 64), 1, 4))} PARAMS',
                 'TRAINING DONE!'):
        assert line in stdout.splitlines()
    assert "CLASS LABELS: [('beeps', 16)" in stdout
    assert [int(e) for e in EPOCH_LINE.findall(stdout)] == [1, 2]
    assert re.search(r'^MAX ACC: [\d.]+$', stdout, re.M)

    models = out / 'models'
    for name in ('AED_Tiny_model_epoch_1.pt', 'AED_Tiny_model_epoch_2.pt', 'AED_Tiny_model_best.pt',
                 'AED_Tiny_last.pt'):
        assert (models / name).is_file(), name
    ckpt = load_checkpoint(models / 'AED_Tiny_model_best.pt')
    net = load_model('AED_Tiny_model_best.pt', models, 'cpu').net
    assert ckpt['classes'] == ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren']
    assert tuple(ckpt['im_size']) == (64, 64) and ckpt['filters'] == 4 and ckpt['multi_label'] is False
    assert ckpt['spec'] == {'length': cfg.SPEC_LENGTH, 'overlap': cfg.SPEC_OVERLAP,
                            'sample_rate': cfg.SAMPLE_RATE, 'resample': cfg.RESAMPLE_METHOD}
    with torch.no_grad():
        assert net(torch.rand(3, 1, 64, 64)).shape == (3, 5)
    for epoch in (1, 2):
        # 5 classes: a 5.25 x 4.725 inch figure (0.45 inch per class + 3) at 100 dpi
        assert_plot(out / 'confmatrix' / f'Tiny_{epoch}.png', 525, 472)
    assert len((out / 'logs' / 'Tiny.csv').read_text().splitlines()) == 3
    assert_plot(out / 'logs' / 'Tiny_curves.png', 1000, 400)


def fake_accuracies(monkeypatch, fractions):
    """Make validation report the given accuracy per epoch (in call order)."""
    real = AED_train.evaluate
    calls = iter(fractions)

    def evaluate(*args, **kwargs):
        stats = real(*args, **kwargs)
        stats['acc_sum'] = torch.tensor(stats['batches'] * next(calls), dtype=torch.float64)
        return stats
    monkeypatch.setattr(AED_train, 'evaluate', evaluate)


@pytest.mark.parametrize('fractions, best', [([0.9, 0.5, 0.7], 1), ([0.5, 0.9, 0.9], 3)])
def test_best_epoch_weights_are_saved_not_the_last(specs, out, monkeypatch, capsys, fractions, best):
    fake_accuracies(monkeypatch, fractions)
    assert AED_train.main(train_args(specs, out, epochs=3)) == 0
    assert f'MAX ACC: {max(fractions) * 100:.1f}' in capsys.readouterr().out
    models = out / 'models'
    saved = load_checkpoint(models / 'AED_Example_Run_model_best.pt')
    assert saved['epoch'] == best
    snapshot = load_checkpoint(models / f'AED_Example_Run_model_epoch_{best}.pt')
    assert states_equal(saved['state_dict'], snapshot['state_dict'])
    if best != 3:  # defect 1: the original saved the last epoch's weights
        last = load_checkpoint(models / 'AED_Example_Run_model_epoch_3.pt')
        assert not states_equal(saved['state_dict'], last['state_dict'])


def test_checkpoint_round_trip(tmp_path):
    net = AEDNet(4, (64, 64), 1, 4)
    meta = {'classes': list('abcd'), 'run_name': 'x', 'epoch': 3, 'im_size': [64, 64], 'im_dim': 1,
            'filters': 4, 'dropout': 0.5, 'nonlinearity': 'relu', 'multi_label': False,
            'spec': {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}}
    save_checkpoint(tmp_path / 'm.pt', net, meta)
    loaded, ckpt = load_model(tmp_path / 'm.pt', tmp_path, 'cpu').net, load_checkpoint(tmp_path / 'm.pt')
    assert states_equal(loaded.state_dict(), net.state_dict()) and ckpt['epoch'] == 3
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))


def test_pretrained_transfer_to_other_class_count(specs, out, monkeypatch, capsys):
    assert AED_train.main(train_args(specs, out, '--run-name', 'Five', epochs=1)) == 0
    source = load_checkpoint(out / 'models' / 'AED_Five_model_best.pt')
    three = subset(specs, out / 'three', ['beeps', 'hum', 'siren'], per_class=8)
    # the same output layer does not fit 3 classes: a clear error that names the fix
    with pytest.raises(SystemExit) as e:
        AED_train.main(train_args(three, out, '--pretrained', 'AED_Five_model_best.pt',
                                  '--run-name', 'Three', epochs=1))
    assert 'LOAD_OUTPUT_LAYER' in error_of(e)
    # all but the output layer; a zero learning rate keeps the transferred weights as they are
    monkeypatch.setattr(cfg, 'LOAD_OUTPUT_LAYER', False)
    monkeypatch.setattr(cfg, 'LEARNING_RATE', {0: 0.0})
    assert AED_train.main(train_args(three, out, '--pretrained', 'AED_Five_model_best.pt',
                                     '--run-name', 'Three', epochs=1)) == 0
    assert 'IMPORTED MODEL PARAMS' in capsys.readouterr().out
    target = load_checkpoint(out / 'models' / 'AED_Three_model_best.pt')
    assert target['classes'] == ['beeps', 'hum', 'siren']
    assert target['state_dict']['output.weight'].shape == (3, 512)
    for key, value in source['state_dict'].items():
        if key.endswith('weight') and not key.startswith('output.') and value.dim() > 1:
            assert torch.equal(target['state_dict'][key], value), key


def test_pretrained_with_other_architecture(specs, out, tmp_path):
    other = AEDNet(5, (64, 64), 1, 8)
    meta = {'classes': ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren'], 'im_size': [64, 64],
            'im_dim': 1, 'filters': 8}
    save_checkpoint(tmp_path / 'wide.pt', other, meta)
    # a missing file or one that is no checkpoint is a configuration error (exit 2):
    # tests/test_train_settings.py
    with pytest.raises(SystemExit) as e:
        AED_train.main(train_args(specs, out, '--pretrained', str(tmp_path / 'wide.pt'), epochs=1))
    assert 'shape' in error_of(e)


# a missing dataset, VAL_SPLIT = 1 and a too small image are configuration errors
# (exit 2): tests/test_train_settings.py
@pytest.mark.parametrize('case', ['one_class', 'empty_class', 'all_unreadable'])
def test_bad_dataset_or_settings_give_one_line_error(specs, out, monkeypatch, case):
    dataset = out / 'data'
    if case == 'one_class':
        subset(specs, dataset, ['hum'])
    elif case == 'empty_class':
        subset(specs, dataset, ['hum', 'siren'])
        (dataset / 'void').mkdir()
    elif case == 'all_unreadable':
        for c in ('hum', 'siren'):
            (dataset / c).mkdir(parents=True)
            for i in range(3):
                (dataset / c / f'{i}.png').write_bytes(b'garbage')
    with pytest.raises(SystemExit) as e:
        AED_train.main(train_args(dataset, out, epochs=1))
    msg = error_of(e)
    expected = {'one_class': 'at least 2', 'empty_class': 'void',
                'all_unreadable': 'no training batch could be loaded'}[case]
    assert expected in msg
    assert not list(out.glob('models/*model*.pt'))  # no model written


def test_val_split_zero_trains_on_everything(specs, out, monkeypatch, capsys):
    monkeypatch.setattr(cfg, 'VAL_SPLIT', 0)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 4)
    # 20 images and a batch size of 64: clamped with a warning
    assert AED_train.main(train_args(specs, out, '--batch-size', '64', epochs=2)) == 0
    captured = capsys.readouterr()
    assert 'TRAINING IMAGES: 20' in captured.out and 'VALIDATION IMAGES: 0' in captured.out
    assert 'NO VALIDATION SET' in captured.out
    assert 'batch size 64 is larger than the training set' in captured.err
    assert re.search(r'^EPOCH 2 TRAIN LOSS: [\d.]+ VAL LOSS: - ', captured.out, re.M)
    assert (out / 'models' / 'AED_Example_Run_model_best.pt').is_file()
    assert not (out / 'confmatrix').exists()


def test_image_cache_trains(specs, out, monkeypatch, capsys):
    monkeypatch.setattr(cfg, 'USE_CACHE', True)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 4)
    assert AED_train.main(train_args(specs, out, epochs=1)) == 0
    assert re.search(r'^EPOCH 1 TRAIN LOSS: [\d.]+ VAL LOSS: [\d.]+ ', capsys.readouterr().out, re.M)


def test_unreadable_images_are_skipped_and_counted(specs, out, capsys):
    dataset = subset(specs, out / 'data', ['hum', 'siren'], per_class=6)
    (dataset / 'hum' / 'broken.png').write_bytes(b'this is not a png')
    (dataset / 'siren' / 'empty.png').write_bytes(b'')
    assert AED_train.main(train_args(dataset, out, '--batch-size', '4', epochs=2)) == 0
    captured = capsys.readouterr()
    assert 'broken.png' in captured.err and 'empty.png' in captured.err
    assert re.search(r'epoch 1: [12] unreadable image\(s\) skipped', captured.err)
    assert 'TRAINING DONE!' in captured.out


def test_resume_continues_from_saved_epoch(specs, out, capsys, monkeypatch):
    # a schedule that ends before epoch 2, so stopping after epoch 2 of a 3-epoch
    # run and running 2 epochs then resuming see the same rates
    monkeypatch.setattr(cfg, 'LEARNING_RATE', {0: 0.002, 1: 0.001})
    common = ['--deterministic']
    assert AED_train.main(train_args(specs, out / 'a', '--run-name', 'Straight', *common, epochs=3)) == 0
    assert AED_train.main(train_args(specs, out / 'b', '--run-name', 'Split', *common, epochs=2)) == 0
    capsys.readouterr()
    last = out / 'b' / 'models' / 'AED_Split_last.pt'
    assert load_checkpoint(last)['epoch'] == 2
    assert AED_train.main(train_args(specs, out / 'b', '--resume', str(last), *common, epochs=3)) == 0
    stdout = capsys.readouterr().out
    assert 'RESUMING Split AT EPOCH 3' in stdout
    assert [int(e) for e in EPOCH_LINE.findall(stdout)] == [3]
    assert len((out / 'logs' / 'Split.csv').read_text().splitlines()) == 4  # header + 3 epochs
    # the resumed run ends exactly where the uninterrupted one does
    straight = load_checkpoint(out / 'a' / 'models' / 'AED_Straight_last.pt')
    resumed = load_checkpoint(last)
    assert resumed['epoch'] == 3
    assert states_equal(straight['state_dict'], resumed['state_dict'])
    assert states_equal(straight['best_state'] or straight['state_dict'],
                        resumed['best_state'] or resumed['state_dict'])


def test_resume_rejects_a_plain_model(specs, out, capsys):
    assert AED_train.main(train_args(specs, out, epochs=1)) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        AED_train.main(train_args(specs, out, '--resume',
                                  str(out / 'models' / 'AED_Example_Run_model_best.pt'), epochs=2))
    assert e.value.code == 2  # a setting that cannot work, found before any work
    assert 'not a resume checkpoint' in capsys.readouterr().err.splitlines()[-1]


def interrupt_in_epoch(monkeypatch, epoch):
    """Ctrl-C at the start of the given epoch's training (counting this run's epochs from 1)."""
    real, calls = AED_train.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(AED_train, 'train_epoch', train_epoch)


@pytest.mark.parametrize('save', [True, False])
def test_ctrl_c_says_how_to_resume_and_saves_best(specs, out, monkeypatch, capsys, save):
    monkeypatch.setattr(cfg, 'SAVE_AFTER_INTERRUPT', save)
    monkeypatch.setattr(cfg, 'SNAPSHOT_EPOCHS', [10])
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 6)
    elsewhere = out / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative --model-path, from a folder other than the repository's
    argv = train_args(specs, out, '--model-path', 'runs', epochs=3)
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 3)
        assert AED_train.main(argv) == 130
    captured = capsys.readouterr()
    last = elsewhere / 'runs' / 'AED_Example_Run_last.pt'
    command = f'python {AED_train.ROOT / "AED_train.py"} --resume {last}'
    lines = captured.err.splitlines()
    assert lines[-3:] == ['TRAINING INTERRUPTED IN EPOCH 3', f'PROGRESS SAVED: {last}',
                          f'RESUME WITH: {command}']
    assert 'TRAINING DONE!' not in captured.out and load_checkpoint(last)['epoch'] == 2
    best = elsewhere / 'runs' / 'AED_Example_Run_model_best.pt'
    assert best.is_file() == save
    if save:
        epoch = load_checkpoint(best)['epoch']
        assert f'BEST MODEL (EPOCH {epoch}) SAVED: {best}' in captured.out.splitlines()
    # the printed command, run as it reads, finishes the run
    monkeypatch.setattr(cfg, 'TRAIN_WORKERS', 0)
    monkeypatch.setattr(cfg, 'DEVICE', 'cpu')
    assert AED_train.main(command.split()[2:]) == 0
    assert 'RESUMING Example_Run AT EPOCH 3' in capsys.readouterr().out
    assert load_checkpoint(last)['epoch'] == 3


def test_ctrl_c_before_an_epoch_finished_points_to_the_resumed_checkpoint(specs, out, monkeypatch,
                                                                         capsys):
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 4)
    monkeypatch.chdir(out)
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 1)
        assert AED_train.main(train_args(specs, out, epochs=2)) == 130
    err = capsys.readouterr().err
    assert 'TRAINING INTERRUPTED IN EPOCH 1' in err and 'RESUME WITH' not in err
    assert 'no epoch finished, no model saved' in err
    assert AED_train.main(train_args(specs, out, epochs=1)) == 0
    last = out / 'models' / 'AED_Example_Run_last.pt'
    moved = out / 'moved_last.pt'
    last.rename(moved)
    with monkeypatch.context() as m:
        interrupt_in_epoch(m, 1)
        assert AED_train.main(train_args(specs, out, '--resume', str(moved), epochs=3)) == 130
    command = f'python {AED_train.ROOT / "AED_train.py"} --resume {moved}'
    assert f'RESUME WITH: {command}' in capsys.readouterr().err


def test_multi_label_uses_sigmoid_loss_and_batch_augmentation(specs, out, monkeypatch, capsys):
    import model.training as training
    monkeypatch.setattr(cfg, 'MULTI_LABEL', True)
    monkeypatch.setattr(cfg, 'VAL_HAS_MULTI_LABEL', True)
    real, steps = training.compute_loss, []

    def compute_loss(logits, targets, multi_label):
        loss = real(logits, targets, multi_label)
        if torch.is_grad_enabled():  # training steps, not validation
            # the loss the sigmoid outputs give, clipped as the original did
            p = torch.sigmoid(logits.detach()).clamp(1e-7, 1 - 1e-7)
            bce = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
            steps.append((multi_label, targets.sum(dim=1), loss.item(), bce.item()))
        return loss
    monkeypatch.setattr(training, 'compute_loss', compute_loss)
    assert AED_train.main(train_args(specs, out, epochs=1)) == 0
    # 72 training images in batches of 16: four full batches and one of 8 (>= 16 / 2)
    assert [len(per_image) for _, per_image, _, _ in steps] == [16, 16, 16, 16, 8]
    for multi_label, per_image, loss, bce in steps:
        assert multi_label and loss == pytest.approx(bce, rel=1e-5)
        # mixed targets: MEAN_TARGETS_PER_IMAGE (3) classes per image on average, not one-hot
        assert per_image.mean().item() >= cfg.MEAN_TARGETS_PER_IMAGE and per_image.max() > 1
    assert load_checkpoint(out / 'models' / 'AED_Example_Run_model_best.pt')['multi_label'] is True
    assert re.search(r'VAL ACCURACY: [\d.]+ %', capsys.readouterr().out)


def test_checkpoint_records_the_settings_the_images_were_made_with(specs, out, tmp_path):
    from model.audio import read_spec_settings, write_spec_settings
    assert read_spec_settings(specs)['length'] == 3  # written by AED_spec.py in conftest
    data = subset(specs, tmp_path / 'five', ['beeps', 'clicks'], per_class=6)
    write_spec_settings(data, {'length': 5, 'overlap': 4, 'sample_rate': 44100, 'resample': 'linear'})
    assert AED_train.main(train_args(data, out, '--run-name', 'Five', epochs=1)) == 0
    best = load_checkpoint(out / 'models' / 'AED_Five_model_best.pt')
    assert best['spec']['length'] == 5 and best['spec']['overlap'] == 4


# ------------------------------------------------------------------ epochs without overhead

def test_background_writer_runs_jobs_in_order_and_reports_their_errors():
    import threading
    import time
    from model.training import BackgroundWriter
    writer, done, threads = BackgroundWriter(), [], set()

    def job(name, delay=0.0):
        time.sleep(delay)
        threads.add(threading.current_thread().name)
        done.append(name)
    writer.submit(job, 'first', 0.2)
    writer.submit(job, 'second')  # waits for the first
    assert done == ['first']
    writer.wait()
    assert done == ['first', 'second'] and threading.current_thread().name not in threads

    def broken():
        raise OSError('disk full')
    writer.submit(broken)
    with pytest.raises(OSError, match='disk full'):
        writer.submit(job, 'third')
    writer.submit(broken)
    with pytest.raises(OSError, match='disk full'):
        writer.close()


def test_epoch_files_hold_that_epochs_state_though_written_while_the_next_trains(specs, out, monkeypatch):
    import time
    real_report, real_write, weights = AED_train.report, AED_train.write_epoch_files, {}

    def report(job, best, epoch, *args):
        weights[epoch] = {k: v.clone() for k, v in job.module.state_dict().items()}
        return real_report(job, best, epoch, *args)

    def slow_write(args, epoch, *rest):
        time.sleep(1.0)  # the next epoch trains meanwhile and changes the live weights
        return real_write(args, epoch, *rest)
    monkeypatch.setattr(AED_train, 'report', report)
    monkeypatch.setattr(AED_train, 'write_epoch_files', slow_write)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 8)
    assert AED_train.main(train_args(specs, out, epochs=2)) == 0
    models = out / 'models'
    first = load_checkpoint(models / 'AED_Example_Run_model_epoch_1.pt')['state_dict']
    assert states_equal(first, weights[1]) and not states_equal(first, weights[2])
    # all of the last epoch's files were written before main() returned
    last = load_checkpoint(models / 'AED_Example_Run_last.pt')
    assert last['epoch'] == 2 and states_equal(last['state_dict'], weights[2])
    assert len(last['log']) == 2 and (out / 'confmatrix' / 'Example_Run_2.png').is_file()


def test_compile_trains_and_saves_loadable_checkpoints(specs, out, monkeypatch, capsys):
    import functools
    # dynamo's eager backend: the same compiled wrapper (and _orig_mod. keys) without a C++ build
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='eager'))
    real, nets = AED_train.train_epoch, []

    def train_epoch(net, *args, **kwargs):
        nets.append(type(net).__name__)
        return real(net, *args, **kwargs)
    monkeypatch.setattr(AED_train, 'train_epoch', train_epoch)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 8)
    monkeypatch.setattr(cfg, 'BACKGROUND_MIX', {**cfg.BACKGROUND_MIX, 'prob': 0})  # no background here
    assert AED_train.main(train_args(specs, out, '--compile', epochs=1)) == 0
    assert nets == ['OptimizedModule']
    assert 'WARNING' not in capsys.readouterr().err
    for name in ('AED_Example_Run_model_best.pt', 'AED_Example_Run_last.pt'):
        ckpt = load_checkpoint(out / 'models' / name)
        assert not [k for k in ckpt['state_dict'] if k.startswith('_orig_mod.')]
        load_model(out / 'models' / name, out, 'cpu')  # loads into a plain network
    last = out / 'models' / 'AED_Example_Run_last.pt'
    assert AED_train.main(train_args(specs, out, '--compile', '--resume', str(last), epochs=2)) == 0


def test_compile_falls_back_with_a_warning(specs, out, monkeypatch, capsys):
    def unsupported(net):
        raise RuntimeError('Dynamo is not supported on this Python\nsecond line')
    monkeypatch.setattr(torch, 'compile', unsupported)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 4)
    assert AED_train.main(train_args(specs, out, '--compile', epochs=1)) == 0
    captured = capsys.readouterr()
    assert re.search(r'^WARNING: torch.compile is unavailable \(Dynamo is not supported on this Python\); '
                     r'running uncompiled$', captured.err, re.M)
    assert 'TRAINING DONE!' in captured.out


# ------------------------------------------------------------------ validation as the original did it

@pytest.mark.parametrize('multi_label, val_multi', [(False, True), (True, False), (True, True)])
def test_validation_mixing_follows_val_has_multi_label_alone(specs, out, monkeypatch,
                                                             multi_label, val_multi):
    monkeypatch.setattr(cfg, 'MULTI_LABEL', multi_label)
    monkeypatch.setattr(cfg, 'VAL_HAS_MULTI_LABEL', val_multi)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 8)
    real, seen = AED_train.evaluate, []

    def evaluate(net, loader, device, precision, num_classes, multi, binary, batch_transform=None,
                 **kwargs):
        seen.append((multi, binary, batch_transform is not None))
        return real(net, loader, device, precision, num_classes, multi, binary,
                    batch_transform=batch_transform, **kwargs)
    monkeypatch.setattr(AED_train, 'evaluate', evaluate)
    assert AED_train.main(train_args(specs, out, '--batch-size', '4', epochs=1)) == 0
    # sigmoid loss with MULTI_LABEL, binary accuracy with both, mixing with VAL_HAS_MULTI_LABEL
    assert seen == [(multi_label, multi_label and val_multi, val_multi)]


def test_evaluate_averages_batch_means_as_the_original():
    from model.training import Precision, evaluate
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        net[1].bias.zero_()
    x = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [3.0, 0, 0, 0], [1.0, 0, 0, 0]]).view(4, 1, 2, 2)
    y = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]])
    batches = [(x[:3], y[:3], 0), (x[3:], y[3:], 0)]  # 3 right, then 1 wrong
    stats = evaluate(net, batches, torch.device('cpu'), Precision(torch.device('cpu')), 2, False, False)
    assert stats['batches'] == 2
    # (1 + 0) / 2, not 3 / 4 as one mean over all images would give
    assert stats['acc_sum'].item() / stats['batches'] == pytest.approx(0.5)
    with torch.no_grad():
        losses = [compute_loss(net(bx), by, False).item() for bx, by, _ in batches]
    assert stats['loss_sum'].item() / stats['batches'] == pytest.approx(sum(losses) / 2)
    assert stats['cm'].tolist() == [[3, 0], [1, 0]]


def test_epoch_line_reports_the_mean_of_batch_means(specs, out, monkeypatch, capsys):
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 6)  # 3 validation images: batches of 2 and 1
    real, stats = AED_train.evaluate, []

    def evaluate(*args, **kwargs):
        stats.append(real(*args, **kwargs))
        return stats[-1]
    monkeypatch.setattr(AED_train, 'evaluate', evaluate)
    assert AED_train.main(train_args(specs, out, '--batch-size', '2', epochs=1)) == 0
    assert stats[0]['batches'] == 2
    line = re.search(r'VAL LOSS: ([\d.]+) VAL ACCURACY: ([\d.]+) %', capsys.readouterr().out)
    assert float(line[1]) == pytest.approx(stats[0]['loss_sum'].item() / 2, abs=1e-6)
    assert float(line[2]) == percent(stats[0]['acc_sum'].item() / 2)


def test_detached_copy_is_not_changed_by_later_steps():
    net = AEDNet(3, (64, 64), 1, 2)
    optimizer = make_optimizer('adam', net.parameters(), 0.01)
    net(torch.rand(2, 1, 64, 64)).sum().backward()
    optimizer.step()
    saved = detached_copy(optimizer.state_dict())
    before = {k: v.clone() for k, v in saved['state'][0].items()}
    net(torch.rand(2, 1, 64, 64)).sum().backward()
    optimizer.step()  # updates the live moments in place
    assert not torch.equal(optimizer.state_dict()['state'][0]['exp_avg'], before['exp_avg'])
    for key, value in before.items():
        assert torch.equal(saved['state'][0][key], value), key
    assert saved['param_groups'][0]['betas'] == (0.5, 0.999)


def test_detached_copy_copies_a_gpu_tensor_once():
    copies = []

    class OnGpu(torch.Tensor):
        """A CPU tensor that says it lives on a GPU and counts the copies made of it."""
        device = property(lambda self: torch.device('cuda', 0))

        def cpu(self, *args, **kwargs):
            copies.append('cpu')
            return self

        def clone(self, *args, **kwargs):
            copies.append('clone')
            return super().clone(*args, **kwargs)
    weight = torch.ones(3).as_subclass(OnGpu)
    cpu_weight = torch.ones(2)
    clean = detached_copy({'w': weight, 'b': cpu_weight})
    assert list(clean) == ['w', 'b'] and copies == ['cpu']
    assert torch.equal(clean['b'], cpu_weight) and clean['b'].data_ptr() != cpu_weight.data_ptr()


def recorded_epochs(monkeypatch):
    """The batches each epoch's training saw, [[(x, y)]], recorded by wrapping its loader."""
    real, epochs = AED_train.train_epoch, []

    def train_epoch(net, loader, *args, **kwargs):
        epochs.append([])

        def recorded():
            for x, y, n in loader:
                epochs[-1].append((x.clone(), y.clone()))
                yield x, y, n
        return real(net, recorded(), *args, **kwargs)
    monkeypatch.setattr(AED_train, 'train_epoch', train_epoch)
    return epochs


@pytest.mark.parametrize('shuffle', [True, False])
def test_each_epoch_gets_its_own_shuffle_and_augmentation(specs, out, monkeypatch, shuffle):
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 4)
    monkeypatch.setattr(cfg, 'RANDOMIZE_TRAIN_SET', shuffle)
    monkeypatch.setattr(cfg, 'IM_AUGMENTATION', {'noise': [1.0, 0.01]})
    epochs = recorded_epochs(monkeypatch)
    assert AED_train.main(train_args(specs, out, '--batch-size', '6', epochs=2)) == 0
    (first, second) = ([torch.cat(part) for part in zip(*epoch)] for epoch in epochs)
    labels = [y.argmax(dim=1).tolist() for _, y in (first, second)]
    if shuffle:  # a new order of the same images
        assert labels[0] != labels[1] and sorted(labels[0]) == sorted(labels[1])
    else:  # the same order, newly augmented: the same images with other noise
        assert labels[0] == labels[1]
        assert not torch.equal(first[0], second[0])
        assert (first[0] - second[0]).abs().mean() < 0.1
