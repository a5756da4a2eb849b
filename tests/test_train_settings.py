"""AED_train.py settings: configuration checks, output folders, the learning-rate
line, the run settings every checkpoint records, and --resume restoring them.

Training runs are tiny (64x64 images, 4 filters, 8 images per class) on the
demo spectrograms conftest makes; every output goes under tmp_path.
"""
import json
import re

import pytest
import torch

import AED_train
import config as cfg
from helpers import stop_after
from model.checkpoint import load_checkpoint
from model.training import describe_schedule, learning_rate

TINY = ['--im-size', '64', '64', '--filters', '4', '--batch-size', '16', '--device', 'cpu',
        '--workers', '0']
CLASSES = ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren']


@pytest.fixture(autouse=True)
def small(tmp_path, monkeypatch):
    """One torch thread, 8 images per class, no background mixing, and config.py's output folders
    under tmp_path/default (so a run that ignored its flags would write there)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    monkeypatch.setattr(cfg, 'MAX_SAMPLES_PER_CLASS', 8)
    monkeypatch.setattr(cfg, 'SNAPSHOT_EPOCHS', [-1])
    # the demo data here has no background class (tests/test_background_mix.py has one)
    monkeypatch.setattr(cfg, 'BACKGROUND_MIX', {**cfg.BACKGROUND_MIX, 'prob': 0})
    for name in ('MODEL_PATH', 'LOG_PATH', 'CONFMATRIX_PATH'):
        monkeypatch.setattr(cfg, name, str(tmp_path / 'default' / name.lower()))
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture(scope='module')
def specs(demo_data):
    return demo_data / 'train' / 'spec'


def run_args(specs, run, *extra, epochs=2):
    """A tiny run writing into run/models, run/logs and run/cm."""
    return ['--dataset', str(specs), '--model-path', str(run / 'models'), '--log-path',
            str(run / 'logs'), '--confmatrix-path', str(run / 'cm'), '--epochs', str(epochs),
            *TINY, *extra]


def config_error(excinfo, capsys):
    """The one ERROR line of a configuration error (exit status 2), the last on stderr."""
    assert excinfo.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith('ERROR')] == err[-1:], err
    return err[-1]


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ configuration checks

BAD_CONFIG = [
    ('IM_AUGMENTATION', {'rolll': [0.5, (0.0, 0.05)]}, "unknown augmentation 'rolll'"),
    ('IM_AUGMENTATION', {'roll': [0.5, 0.05]}, "'roll' value must be"),
    ('IM_AUGMENTATION', {'noise': [1.5, 0.01]}, 'probability in 0..1'),
    ('LEARNING_RATE', {}, 'non-empty'),
    ('LEARNING_RATE', {0: 'fast'}, 'rates >= 0'),
    ('LEARNING_RATE', {-5: 0.001}, 'whole epochs >= 0'),
    ('LR_DESCENT', 'yes', 'True or False'),
    ('OPTIMIZER', 'sgd', "'adam', 'nesterov'"),
    ('NONLINEARITY', 'tanh', 'relu'),
    ('DROPOUT', 1.0, 'from 0 to below 1'),
    ('IM_DIM', 2, 'one of 1, 3'),
    ('VAL_SPLIT', 1, 'below 1'),
    ('MAX_SAMPLES_PER_CLASS', 0, '(None = no limit) must be a whole number of at least 1'),
    ('MEAN_TARGETS_PER_IMAGE', 0.5, 'at least 1'),
    ('SNAPSHOT_EPOCHS', 10, 'a list of epochs'),
    ('MULTI_LABEL', 'no', 'True or False'),
    ('L2_WEIGHT', -1e-4, 'at least 0'),
    ('EPOCH_START', 3, 'EPOCHS (--epochs) must be a whole number of at least 3, got 2'),
    ('SPEC_OVERLAP', 3, 'smaller than SPEC_LENGTH'),
    ('SPEC_LENGTH', 4, 'SPEC_LENGTH'),
    ('SAMPLE_RATE', 0, 'at least 1'),
    ('MIN_SAMPLES_PER_CLASS', -2, 'at least -1'),
    ('CONFMATRIX_MAX_CLASSES', 0, 'at least 1'),
    ('COMPILE', 'yes', 'True or False'),
    ('BACKGROUND_CLASSES', 'background', 'must be a list of names'),
    ('BACKGROUND_MIX', 0.5, "must be {'prob': p, 'ebr_db': (low, high), 'partial': q}"),
    ('BACKGROUND_MIX', {'prob': 0.5, 'ebr_db': (-6, 6)}, "must be {'prob': p"),
    ('BACKGROUND_MIX', {'prob': 1.5, 'ebr_db': (-6, 6), 'partial': 0.5}, "'prob' (--background-mix) must be"),
    ('BACKGROUND_MIX', {'prob': 0.5, 'ebr_db': (-6, 6), 'partial': -0.1}, "'partial' must be a number"),
    ('BACKGROUND_MIX', {'prob': 0.5, 'ebr_db': (6, -6), 'partial': 0.5}, "'ebr_db' must be (low, high)"),
    ('BACKGROUND_MIX', {'prob': 0.5, 'ebr_db': (0, float('inf')), 'partial': 0.5}, "'ebr_db' must be"),
    ('BACKGROUND_MIX', {'prob': 0.5, 'ebr_db': 6, 'partial': 0.5}, "'ebr_db' must be"),
]


@pytest.mark.parametrize('name, value, reason', BAD_CONFIG, ids=[f'{n}={v!r}' for n, v, _ in BAD_CONFIG])
def test_bad_constant_is_one_error_line_before_any_work(specs, tmp_path, monkeypatch, capsys,
                                                        name, value, reason):
    monkeypatch.setattr(cfg, name, value)
    built = []
    monkeypatch.setattr(AED_train, 'parse_dataset', lambda *a, **k: built.append(1))
    with pytest.raises(SystemExit) as e:
        AED_train.main(run_args(specs, tmp_path / 'run'))
    line = config_error(e, capsys)
    constant = 'EPOCHS' if name == 'EPOCH_START' else name
    assert constant in line and reason in line, line
    assert not built  # no dataset read, no network built
    assert not (tmp_path / 'run').exists()


def test_every_bad_setting_gets_its_own_error_line(specs, tmp_path, monkeypatch, capsys):
    # two unknown augmentations are two lines, as every other bad entry
    monkeypatch.setattr(cfg, 'IM_AUGMENTATION', {'rolll': [0.5, (0.0, 0.05)], 'roll': [0.5, (0.0, 0.05)],
                                                 'blur': [0.5, 3]})
    monkeypatch.setattr(cfg, 'OPTIMIZER', 'sgd')
    with pytest.raises(SystemExit) as e:
        AED_train.main(run_args(specs, tmp_path / 'run', '--batch-size', '0'))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith('ERROR: ') for line in err)
    for name in ("IM_AUGMENTATION: unknown augmentation 'rolll'",
                 "IM_AUGMENTATION: unknown augmentation 'blur'", 'OPTIMIZER', 'BATCH_SIZE (--batch-size)'):
        assert sum(name in line for line in err) == 1, name


def test_a_pretrained_file_that_is_no_checkpoint_stops_before_any_work(specs, tmp_path, monkeypatch,
                                                                       capsys):
    notes = tmp_path / 'notes.txt'
    notes.write_text('not a model\n')
    read = []
    monkeypatch.setattr(AED_train, 'parse_dataset', lambda *a, **k: read.append(1))
    monkeypatch.setattr(AED_train, 'AEDNet', lambda *a, **k: read.append(2))
    with pytest.raises(SystemExit) as e:
        AED_train.main(run_args(specs, tmp_path / 'run', '--pretrained', str(notes)))
    line = config_error(e, capsys)
    assert line.startswith(f'ERROR: PRETRAINED_MODEL (--pretrained): {notes} is not an AED checkpoint')
    assert not read and not (tmp_path / 'run').exists()  # no dataset read, no network, no files


BAD_FLAGS = [
    (['--batch-size', '0'], 'BATCH_SIZE (--batch-size)'),
    (['--workers', '-1'], 'TRAIN_WORKERS (--workers)'),
    (['--seed', '-3'], 'RANDOM_SEED (--seed)'),
    (['--filters', '0'], 'FILTERS (--filters)'),
    (['--device', 'gpu'], "DEVICE (--device) must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (['--im-size', '32', '32'], 'too small'),
    (['--run-name', 'a/b'], 'RUN_NAME (--run-name)'),
    (['--dataset', 'no_such_folder'], 'DATASET_PATH (--dataset): folder no_such_folder does not exist'),
    (['--log-path', 'a_file'], 'LOG_PATH (--log-path): a_file is a file, not a folder'),
    (['--pretrained', 'missing.pt'], 'PRETRAINED_MODEL (--pretrained): model file missing.pt not found'),
    (['--background-mix', '1.5'], "BACKGROUND_MIX 'prob' (--background-mix) must be a number from 0 to 1"),
    (['--background-mix', 'nan'], "BACKGROUND_MIX 'prob' (--background-mix) must be a number from 0 to 1"),
    (['--background-classes', ''], 'BACKGROUND_CLASSES (--background-classes) must be a list of names'),
]


@pytest.mark.parametrize('flags, reason', BAD_FLAGS, ids=[f[0] for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_error_line(specs, tmp_path, monkeypatch, capsys, flags, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_file').write_text('not a folder\n')
    with pytest.raises(SystemExit) as e:
        AED_train.main(run_args(specs, tmp_path / 'run') + flags)
    assert reason in config_error(e, capsys)
    assert not (tmp_path / 'run').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_a_device_this_machine_lacks_is_a_setting_error(specs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        AED_train.main(run_args(specs, tmp_path / 'run', '--device', 'cuda'))
    line = config_error(e, capsys)
    assert line == 'ERROR: DEVICE (--device): device cuda requested but CUDA is not available'
    assert not (tmp_path / 'run').exists()


def test_explicit_flags_are_known():
    args = AED_train.parse_args(['--epochs', '3', '--deterministic', '--seed', str(cfg.RANDOM_SEED)])
    # a flag given with its default value still counts as given
    assert args.explicit == {'epochs', 'deterministic', 'seed'}
    assert args.epochs == 3 and args.batch_size == cfg.BATCH_SIZE
    assert AED_train.parse_args([]).explicit == set()


# ------------------------------------------------------------------ learning-rate line

def test_describe_schedule():
    sched = {0: 0.001, 55: 0.000001}
    assert describe_schedule(sched, 1, 10, True) == \
        'epoch 1 0.001 -> epoch 10 0.0001009 (linear; schedule {0: 0.001, 55: 1e-06} fitted to 10 epochs)'
    # the full-length run ends one step short of the final rate (the original's rule)
    assert describe_schedule(sched, 1, 55, True) == \
        'epoch 1 0.001 -> epoch 55 1.916e-05 (linear; schedule {0: 0.001, 55: 1e-06})'
    assert describe_schedule({10: 0.001, 0: 0.01}, 1, 20, True) == \
        'epoch 1 0.01 -> epoch 20 0.001 (linear; schedule {0: 0.01, 10: 0.001}; final rate from epoch 11)'
    assert learning_rate({10: 0.001, 0: 0.01}, 11, 20, True) == pytest.approx(0.001)
    assert learning_rate({10: 0.001, 0: 0.01}, 10, 20, True) > 0.001
    assert describe_schedule({0: 0.01, 5: 0.001, 30: 1e-4}, 1, 20, False) == \
        'epoch 1 0.01 -> epoch 20 0.001 (steps; schedule {0: 0.01, 5: 0.001, 30: 0.0001}; ' \
        'keys after epoch 20 not reached)'


def test_schedule_line_is_printed_once_and_matches_the_epochs(specs, tmp_path, capsys):
    assert AED_train.main(run_args(specs, tmp_path / 'run', epochs=2)) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith('LEARNING RATE: ')]
    assert lines == ['LEARNING RATE: epoch 1 0.001 -> epoch 2 0.0005005 '
                     '(linear; schedule {0: 0.001, 55: 1e-06} fitted to 2 epochs)']
    # the epochs ran at the rates the line announced
    assert re.findall(r'^EPOCH \d+ .* LR: ([\d.e-]+) ', out, re.M) == ['0.001', '0.0005005']


# ------------------------------------------------------------------ output folders and metadata

def test_output_folders_from_flags_are_printed_and_used(specs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['--dataset', str(specs), '--model-path', 'm', '--log-path', 'l', '--confmatrix-path', 'c',
            '--epochs', '1', '--run-name', 'Where', *TINY]
    assert AED_train.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    for title, folder in (('MODEL PATH', 'm'), ('LOG PATH', 'l'), ('CONFMATRIX PATH', 'c')):
        assert out.count(f'{title}: {tmp_path / folder}') == 1
    assert (tmp_path / 'm' / 'AED_Where_model_best.pt').is_file()
    assert (tmp_path / 'l' / 'Where.csv').is_file() and (tmp_path / 'l' / 'Where_curves.png').is_file()
    assert (tmp_path / 'c' / 'Where_1.png').is_file()
    assert not (tmp_path / 'default').exists()  # config.py's folders untouched
    training = load_checkpoint(tmp_path / 'm' / 'AED_Where_model_best.pt')['training']
    assert training['log_file'] == str(tmp_path / 'l' / 'Where.csv')
    assert training['log_path'] == str(tmp_path / 'l')
    assert training['confmatrix_path'] == str(tmp_path / 'c')
    assert training['model_path'] == str(tmp_path / 'm')


def test_every_checkpoint_records_how_it_was_made(specs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cfg, 'IM_AUGMENTATION', {'roll': [0.5, (0.0, 0.05)], 'noise': [0.1, 0.01]})
    monkeypatch.setattr(cfg, 'LEARNING_RATE', {0: 0.002, 30: 0.0001})
    run = tmp_path / 'run'
    assert AED_train.main(run_args(specs, run, '--seed', '7', '--run-name', 'Meta', epochs=2)) == 0
    out = capsys.readouterr().out
    n_train = int(re.search(r'^TRAINING IMAGES: (\d+)$', out, re.M).group(1))
    n_val = int(re.search(r'^VALIDATION IMAGES: (\d+)$', out, re.M).group(1))
    names = ['AED_Meta_model_best.pt', 'AED_Meta_model_epoch_1.pt', 'AED_Meta_model_epoch_2.pt',
             'AED_Meta_last.pt']
    for name in names:
        t = load_checkpoint(run / 'models' / name)['training']
        json.dumps(t)  # JSON-able as it is
        assert t['augmentation'] == {'roll': [0.5, [0.0, 0.05]], 'noise': [0.1, 0.01]}
        assert t['learning_rate'] == {0: 0.002, 30: 0.0001} and t['lr_descent'] is True
        assert t['epochs'] == 2 and t['seed'] == 7 and t['batch_size'] == 16
        assert t['dataset'] == str(specs.absolute())
        assert list(t['class_counts']['train']) == CLASSES
        assert sum(t['class_counts']['train'].values()) == n_train
        assert sum(t['class_counts']['val'].values()) == n_val
        for c in CLASSES:
            assert t['class_counts']['train'][c] + t['class_counts']['val'][c] == 8
        assert t['optimizer'] == cfg.OPTIMIZER and t['val_split'] == cfg.VAL_SPLIT
        assert t['max_samples_per_class'] == 8 and t['multi_label'] is False


# ------------------------------------------------------------------ resume

def test_resume_alone_from_another_folder_finishes_the_run(specs, tmp_path, monkeypatch, capsys):
    common = ['--deterministic', '--seed', '5']
    assert AED_train.main(run_args(specs, tmp_path / 'a', '--run-name', 'Whole', *common, epochs=4)) == 0
    with monkeypatch.context() as m:
        stop_after(m, AED_train, 2)
        assert AED_train.main(run_args(specs, tmp_path / 'b', '--run-name', 'Cut', *common, epochs=4)) == 130
    last = tmp_path / 'b' / 'models' / 'AED_Cut_last.pt'
    assert load_checkpoint(last)['epoch'] == 2
    capsys.readouterr()

    # another folder, another config.py: the run's own settings are restored
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(cfg, 'DEVICE', 'cpu')
    monkeypatch.setattr(cfg, 'TRAIN_WORKERS', 0)
    monkeypatch.setattr(cfg, 'LEARNING_RATE', {0: 0.5})
    monkeypatch.setattr(cfg, 'DATASET_PATH', 'no/such/dataset')
    assert AED_train.main(['--resume', str(last)]) == 0
    captured = capsys.readouterr()
    assert 'RESUMING Cut AT EPOCH 3' in captured.out
    assert [int(e) for e in re.findall(r'^EPOCH (\d+) TRAIN LOSS', captured.out, re.M)] == [3, 4]
    warnings = [line for line in captured.err.splitlines() if line.startswith('WARNING')]
    assert len(warnings) == 1 and "LEARNING_RATE {0: 0.5} differs from the resumed run's" in warnings[0]

    # same weights as the uninterrupted run, all files in the run's own folders
    whole = load_checkpoint(tmp_path / 'a' / 'models' / 'AED_Whole_last.pt')
    resumed = load_checkpoint(last)
    assert resumed['epoch'] == 4 and states_equal(whole['state_dict'], resumed['state_dict'])
    best_whole = load_checkpoint(tmp_path / 'a' / 'models' / 'AED_Whole_model_best.pt')
    best_resumed = load_checkpoint(tmp_path / 'b' / 'models' / 'AED_Cut_model_best.pt')
    assert best_whole['epoch'] == best_resumed['epoch']
    assert states_equal(best_whole['state_dict'], best_resumed['state_dict'])
    assert len((tmp_path / 'b' / 'logs' / 'Cut.csv').read_text().splitlines()) == 5  # header + 4
    assert (tmp_path / 'b' / 'cm' / 'Cut_4.png').is_file()
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / 'default').exists()
    assert resumed['training']['learning_rate'] == {0: 0.001, 55: 0.000001}


def test_resume_overrides_warn_and_impossible_ones_are_errors(specs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cfg, 'DEVICE', 'cpu')
    monkeypatch.setattr(cfg, 'TRAIN_WORKERS', 0)
    run = tmp_path / 'run'
    assert AED_train.main(run_args(specs, run, '--run-name', 'Short', epochs=1)) == 0
    last = run / 'models' / 'AED_Short_last.pt'
    capsys.readouterr()

    two = tmp_path / 'two'
    for c in CLASSES[:2]:
        (two / c).mkdir(parents=True)
        for png in sorted((specs / c).glob('*.png'))[:4]:
            (two / c / png.name).write_bytes(png.read_bytes())
    for flags, reason in ((['--im-size', '128', '64'], '--im-size [128, 64] cannot change a resumed run'),
                          (['--filters', '8'], '--filters 8 cannot change a resumed run'),
                          (['--dataset', str(two)], 'was trained on classes')):
        with pytest.raises(SystemExit) as e:
            AED_train.main(['--resume', str(last), *flags])
        assert reason in config_error(e, capsys)

    # the same image size given again is no override; another epoch count is
    assert AED_train.main(['--resume', str(last), '--epochs', '2', '--im-size', '64', '64']) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith('WARNING')]
    assert warnings == ["WARNING: --epochs 2 overrides the resumed run's 1"]
    assert [int(e) for e in re.findall(r'^EPOCH (\d+) TRAIN LOSS', captured.out, re.M)] == [2]
    assert 'fitted to 2 epochs' in captured.out
    assert load_checkpoint(last)['training']['epochs'] == 2


def test_resume_of_a_checkpoint_without_run_settings_says_so(specs, tmp_path, monkeypatch, capsys):
    """Resume checkpoints written before run settings were recorded still resume, with
    the flags and config.py, and one warning."""
    run = tmp_path / 'run'
    assert AED_train.main(run_args(specs, run, '--run-name', 'Old', epochs=1)) == 0
    last = run / 'models' / 'AED_Old_last.pt'
    ckpt = load_checkpoint(last)
    del ckpt['training']
    torch.save(ckpt, last)
    capsys.readouterr()
    assert AED_train.main(run_args(specs, run, '--resume', str(last), epochs=2)) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith('WARNING')]
    assert warnings == [f'WARNING: {last} records no run settings (an older checkpoint): '
                        f'flags and config.py apply']
    assert 'RESUMING Old AT EPOCH 2' in captured.out
    assert load_checkpoint(last)['training']['epochs'] == 2  # recorded from now on
