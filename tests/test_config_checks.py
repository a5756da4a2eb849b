"""AED_eval and AED_test check every setting they use before any work: one ERROR line each, exit 2."""
import importlib
import re
import sys

import pytest

import AED_eval
import AED_spec
import AED_test
import config as cfg
from helpers import run_main
from model import config_checks as check


def run(capsys, main, *argv):
    return run_main(main, capsys, *argv)


def error_lines(err):
    return [line for line in err.strip().splitlines() if line.startswith('ERROR: ')]


EVAL_CASES = [  # (constant, bad value)
    ('SPEC_LENGTH', 4), ('SPEC_OVERLAP', 3), ('SAMPLE_RATE', 0), ('RESAMPLE_METHOD', 'cubic'),
    ('INFER_BATCH_SIZE', 0), ('INFER_BATCH_SIZE_CPU', -1), ('INFER_COMPILE', 'yes'), ('MAX_PREDICTIONS', 0),
    ('CONFIDENCE_THRESHOLD', 1.5), ('DEVICE', 'gpu'),
    ('EVAL_WORKERS', -1), ('EVAL_THREADS', -2), ('EVAL_CONFMATRIX', 'cm_{model}.txt'),
    ('NORMALIZE_CONFMATRIX', 'yes'), ('CONFMATRIX_MAX_CLASSES', 0), ('TEST_DIR', 'no/such/dir'),
    ('TRAINED_MODEL', 'absent.pt'), ('MODEL_PATH', 'no/such/models/'),
]


@pytest.mark.parametrize('name, value', EVAL_CASES)
def test_eval_checks_each_constant_at_start(capsys, monkeypatch, tiny_model, demo_data, name, value):
    monkeypatch.setattr(cfg, name, value)
    argv = {'--testdir': demo_data / 'test', '--modelname': tiny_model}
    if name == 'TEST_DIR':
        del argv['--testdir']
    if name in ('TRAINED_MODEL', 'MODEL_PATH'):
        del argv['--modelname']
        monkeypatch.setattr(cfg, 'TRAINED_MODEL', 'absent.pt')
    status, out, err = run(capsys, AED_eval.main, *[x for kv in argv.items() for x in kv])
    assert status == 2 and out == ''  # nothing listed, loaded or decoded
    (line,) = error_lines(err)
    assert line.startswith('ERROR: ') and name in line


TEST_CASES = [
    ('SPEC_LENGTH', 7), ('SPEC_OVERLAP', 5), ('SAMPLE_RATE', -1), ('RESAMPLE_METHOD', 'x'),
    ('INFER_BATCH_SIZE', 0), ('INFER_BATCH_SIZE_CPU', -1), ('INFER_COMPILE', 'yes'), ('NUM_RESULTS', 0),
    ('MIN_CONFIDENCE', -0.1), ('DEVICE', 'tpu'),
    ('TEST_THREADS', -1), ('TRAINED_MODEL', 'absent.pt'), ('MODEL_PATH', 'no/such/models/'),
]


@pytest.mark.parametrize('name, value', TEST_CASES)
def test_test_checks_each_constant_at_start(capsys, monkeypatch, tiny_model, demo_data, name, value):
    monkeypatch.setattr(cfg, name, value)
    argv = ['--filenames', demo_data / 'examples' / 'siren_example.wav']
    if name == 'MODEL_PATH':
        monkeypatch.setattr(cfg, 'TRAINED_MODEL', 'absent.pt')
    elif name != 'TRAINED_MODEL':
        argv += ['--modelname', tiny_model]
    status, out, err = run(capsys, AED_test.main, *argv)
    assert status == 2 and out == ''
    (line,) = error_lines(err)
    assert name in line


@pytest.mark.parametrize('argv, expected', [
    (['--speclength', '4'], 'ERROR: --speclength must be one of 2, 3, 5, 10, 30 s, got 4'),
    (['--speclength', '3', '--overlap', '3'],
     'ERROR: --overlap must be at least 0 and smaller than --speclength = 3 s by one sample (1/44100 s) '
     'or more, got 3.0'),
    (['--overlap', '-1'], 'ERROR: --overlap must be at least 0 and smaller than the window length, got -1.0'),
    (['--results', '0'], 'ERROR: NUM_RESULTS (--results) must be a whole number of at least 1, got 0'),
    (['--confidence', '2'], 'ERROR: MIN_CONFIDENCE (--confidence) must be a number from 0 to 1'),
])
def test_test_arguments_are_checked_before_the_model_is_imported(capsys, tiny_model, demo_data, argv,
                                                                expected):
    status, out, err = run(capsys, AED_test.main, '--filenames', demo_data / 'examples' / 'siren_example.wav',
                           '--modelname', tiny_model, *argv)
    assert status == 2 and 'IMPORTING MODEL' not in out
    (line,) = error_lines(err)
    assert line.startswith(expected)


def test_every_problem_gets_its_own_line(capsys, monkeypatch, tiny_model, demo_data):
    monkeypatch.setattr(cfg, 'SAMPLE_RATE', 0)
    status, _, err = run(capsys, AED_eval.main, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                         '--results', 0, '--batch-size', 0, '--speclength', 4)
    lines = error_lines(err)
    assert status == 2 and len(lines) == 4
    for name in ('SAMPLE_RATE', 'MAX_PREDICTIONS (--results)', '--batch-size', '--speclength'):
        assert sum(name in line for line in lines) == 1


def test_reports_that_could_not_be_written_are_refused_up_front(capsys, tiny_model, demo_data, tmp_path):
    status, out, err = run(capsys, AED_eval.main, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                           '--json', tmp_path, '--csv', tmp_path)
    assert status == 2 and out == ''
    assert error_lines(err) == [f'ERROR: --json: {tmp_path} is a folder; give a file name',
                                f'ERROR: --csv: {tmp_path} is a folder; give a file name']


def test_check_helpers():
    assert check.whole('X', 3, 1) is None and check.whole('X', True, 0) and check.whole('X', 2.0, 1)
    assert check.fraction('X', 0) is None and check.fraction('X', 1.0) is None and check.fraction('X', 1.01)
    assert check.device('D', 'cuda:1') is None and check.device('D', 'cuda:x')
    assert check.spec_window('L', 5, 'O', 4.5, 44100) is None
    assert check.spec_window('L', None, 'O', None, 8000) is None
    assert check.spec_window('L', 2, 'O', 2, 8000) == \
        'O must be at least 0 and smaller than L = 2 s by one sample (1/8000 s) or more, got 2'
    # the hop is int((length - overlap) * rate) samples: one sample is the least that advances
    assert check.spec_window('L', 3, 'O', 3 - 1 / 8000, 8000) is None
    assert check.spec_window('L', 3, 'O', 3 - 0.9 / 8000, 8000)
    assert check.spec_window('L', 3, 'O', 2.99999, 44100)
    assert check.spec_window('L', 3, 'O', float('inf'), 44100) and check.spec_window('L', 3, 'O', True, 44100)
    assert check.spec_window('L', 3, 'O', 2, 'x') is None  # a bad rate is SAMPLE_RATE's own error
    assert check.output_file('P', '', check.PLOT_SUFFIXES) is None
    assert check.output_file('P', 'a/b.PNG', check.PLOT_SUFFIXES) is None


@pytest.mark.parametrize('main, argv', [
    (AED_spec.main, ['--src', '{data}/train/wav', '--dst', '{tmp}/spec']),
    (AED_eval.main, ['--testdir', '{data}/test', '--modelname', '{model}']),
    (AED_test.main, ['--filenames', '{data}/examples/siren_example.wav', '--modelname', '{model}'])])
def test_a_zero_hop_is_refused_in_one_wording(capsys, tiny_model, demo_data, tmp_path, main, argv):
    # issue 16.2.2: --overlap 2.99999 with 3 s windows is a hop of int(1e-5 * 44100) = 0 samples,
    # which passed the checks and failed every file with "range() arg 3 must not be zero"
    argv = [a.format(data=demo_data, tmp=tmp_path, model=tiny_model) for a in argv]
    status, out, err = run(capsys, main, *argv, '--speclength', '3', '--overlap', '2.99999')
    assert status == 2 and out == ''
    (line,) = error_lines(err)
    assert re.fullmatch(r'ERROR: --overlap( \(SPEC_OVERLAP\))? must be at least 0 and smaller than --speclength'
                        r'( \(SPEC_LENGTH\))? = 3 s by one sample \(1/44100 s\) or more, got 2\.99999', line)


@pytest.mark.parametrize('script', ['AED_spec', 'AED_train', 'AED_eval', 'AED_test'])
@pytest.mark.parametrize('text, message', [
    ('RUN_NAME = "x"\nLR_DESCENT = Ture\n', "line 2: NameError: name 'Ture' is not defined"),
    ('EPOCHS = = 3\n', 'line 1: SyntaxError: invalid syntax')])
def test_a_config_that_fails_to_import_is_one_error_line(capsys, monkeypatch, tmp_path, script, text,
                                                         message):
    # issue 13.5: a typo in config.py was a traceback
    (tmp_path / 'config.py').write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'config')
    monkeypatch.delitem(sys.modules, script, raising=False)  # both come back at teardown
    with pytest.raises(SystemExit) as info:
        importlib.import_module(script)
    assert info.value.code == 2
    assert capsys.readouterr().err == f'ERROR: {tmp_path / "config.py"}, {message}\n'
