"""AED_eval.py: per-file lines, summary, per-class table, reports, bad files, unknown classes."""
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import AED_eval
from helpers import run_main


def run(capsys, *argv):
    return run_main(AED_eval.main, capsys, *argv)


def summary_value(out, name):
    return float(re.search(rf'^{name}: (\S+)$', out, flags=re.M).group(1))


def test_eval_on_demo_test_set(capsys, tiny_model, demo_data, tmp_path):
    status, out, err = run(capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                           '--confmatrix', tmp_path / 'cm_{model}.png', '--workers', 1,
                           '--csv', tmp_path / 'r.csv', '--json', tmp_path / 'r.json')
    assert status == 0, err
    lines = re.findall(r"^(\d+) (\S+) LABEL: \('(\w+)', ([\d.]+)\) AVGP: ([\d.]+)$", out, flags=re.M)
    assert [int(n) for n, *_ in lines] == list(range(1, 11))
    assert lines[0][1] == 'beeps/beeps_000.wav'
    assert all(float(ap) in (0.0, 1.0, 0.5, 0.3333, 0.25, 0.2) for *_, ap in lines)
    assert 'TESTING DONE!\nERRORS: 0 / 10\nMAP: ' in out
    mean_ap, accuracy = summary_value(out, 'MAP'), summary_value(out, 'ACCURACY')
    assert 0 <= accuracy <= mean_ap <= 1
    assert mean_ap == pytest.approx(sum(float(ap) for *_, ap in lines) / 10, abs=1e-3)
    assert (tmp_path / 'cm_tiny.png').stat().st_size > 1000

    table = re.findall(r'^(\w+) +([\d.]+) +([\d.]+) +([\d.]+) +(\d+)$', out, flags=re.M)
    assert [row[0] for row in table] == ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren']
    assert all(int(row[4]) == 2 for row in table)

    rows = list(csv.DictReader((tmp_path / 'r.csv').read_text().splitlines()))
    assert len(rows) == 10 and rows[0]['true_label'] == 'beeps'
    assert [r['top_label'] for r in rows] == [label for _, _, label, _, _ in lines]
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['summary']['map'] == pytest.approx(mean_ap, abs=1e-4)
    assert report['summary']['errors'] == 0 and len(report['files']) == 10
    assert {c['label'] for c in report['classes']} == {row[0] for row in table}
    accuracy_from_files = sum(f['rank'] == 1 for f in report['files']) / 10
    assert accuracy_from_files == pytest.approx(accuracy, abs=1e-4)


def test_batches_across_files_do_not_change_results(capsys, tiny_model, demo_data, tmp_path):
    confidences = []
    for batch in (1, 7):
        status, _, _ = run(capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                           '--batch-size', batch, '--workers', 2, '--confmatrix', '', '--quiet',
                           '--json', tmp_path / f'b{batch}.json')
        assert status == 0
        files = json.loads((tmp_path / f'b{batch}.json').read_text())['files']
        confidences.append([(f['path'], f['top_label'], f['confidence']) for f in files])
    for (p1, l1, c1), (p2, l2, c2) in zip(*confidences):
        assert p1 == p2 and l1 == l2 and c1 == pytest.approx(c2, abs=1e-4)


@pytest.fixture
def messy_testdir(demo_data, tmp_path):
    """The demo test set plus a class the model does not know and a corrupt file."""
    test = tmp_path / 'test'
    shutil.copytree(demo_data / 'test', test)
    (test / 'dogs').mkdir()
    for i, wav in enumerate(sorted((test / 'hum').glob('*.wav'))):
        shutil.copy(wav, test / 'dogs' / f'dog_{i}.wav')
    (test / 'clicks' / 'corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEbroken')
    return test


def test_unknown_class_and_corrupt_file(capsys, tiny_model, messy_testdir, tmp_path):
    status, out, err = run(capsys, '--testdir', messy_testdir, '--modelname', tiny_model, '--quiet',
                           '--confmatrix', '', '--csv', tmp_path / 'r.csv')
    assert status == 1  # a file could not be read
    assert err.count("test class 'dogs' is unknown") == 1
    assert re.search(r'ERROR: \S+/clicks/corrupt\.wav: \S', err)  # after the bar's carriage return
    assert 'ERRORS: 1 / 13' in out
    assert not re.search(r'^\d+ \S+ LABEL:', out, flags=re.M)  # --quiet: a bar instead
    lines = (tmp_path / 'r.csv').read_text().splitlines()
    rows = {r['path'].rsplit('/', 1)[-1]: r for r in csv.DictReader(lines)}
    assert rows['dog_0.wav']['ap'] == '0.0' and rows['dog_1.wav']['rank'] == ''
    assert rows['corrupt.wav']['error'] and rows['corrupt.wav']['ap'] == ''
    # MAP is over the 12 decoded files; the two unknown-class files count as 0
    aps = [float(r['ap']) for r in rows.values() if r['ap']]
    assert len(aps) == 12
    assert summary_value(out, 'MAP') == pytest.approx(sum(aps) / 12, abs=1e-4)


def test_missing_model_and_missing_testdir(capsys, demo_data, tmp_path):
    status, out, err = run(capsys, '--testdir', demo_data / 'test', '--modelname', tmp_path / 'x.pt')
    (line,) = err.strip().splitlines()
    assert status == 2 and line.startswith(f'ERROR: TRAINED_MODEL (--modelname): model file '
                                           f'{tmp_path / "x.pt"} not found (also looked in ')
    assert out == ''  # checked before the test folder is listed or the model loaded
    status, _, err = run(capsys, '--testdir', tmp_path / 'nothing', '--modelname', tmp_path / 'x.pt')
    assert status == 2 and len(err.strip().splitlines()) == 2  # one line per problem
    assert f'ERROR: TEST_DIR (--testdir): folder {tmp_path / "nothing"} does not exist' in err


def test_a_test_folder_without_test_files_is_one_error(capsys, tiny_model, tmp_path):
    (tmp_path / 'test' / 'dogs').mkdir(parents=True)
    (tmp_path / 'test' / 'stray.wav').write_bytes(b'')
    status, out, err = run(capsys, '--testdir', tmp_path / 'test', '--modelname', tiny_model)
    assert status == 2 and err.strip().splitlines() == [
        f'WARNING: {tmp_path / "test" / "stray.wav"}: not in a class folder, ignored',
        f'WARNING: {tmp_path / "test" / "dogs"}: class folder has no audio files',
        f'ERROR: {tmp_path / "test"} has no test files in class sub-folders']
    assert 'NUMBER OF' not in out


def test_unknown_classes_in_table_csv_and_json(capsys, tiny_model, messy_testdir, tmp_path):
    status, out, err = run(capsys, '--testdir', messy_testdir, '--modelname', tiny_model, '--quiet',
                           '--confmatrix', tmp_path / 'cm.png', '--csv', tmp_path / 'r.csv',
                           '--json', tmp_path / 'r.json')
    assert status == 1  # the corrupt file
    assert 'UNKNOWN CLASSES: dogs\n' in out
    table = {row[0]: row[1:] for row in
             re.findall(r'^(\w+) +([\d.]+) +([\d.]+) +([\d.]+) +(\d+)$', out, flags=re.M)}
    # the unknown class is listed after the model's classes, its 2 files all misses
    assert list(table)[-1] == 'dogs' and table['dogs'] == ('0.0000', '0.0000', '0.0000', '2')
    assert sum(int(r[3]) for r in table.values()) == 12  # every decoded file counted once
    rows = list(csv.DictReader((tmp_path / 'r.csv').read_text().splitlines()))
    assert {r['path'].rsplit('/', 1)[-1]: r['unknown_class'] for r in rows if r['unknown_class'] == '1'} \
        == {'dog_0.wav': '1', 'dog_1.wav': '1'}
    assert sum(r['unknown_class'] == '0' for r in rows) == 11
    report = json.loads((tmp_path / 'r.json').read_text())
    assert report['summary']['unknown_classes'] == ['dogs']
    dogs = [c for c in report['classes'] if c['label'] == 'dogs']
    assert dogs == [{'label': 'dogs', 'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 2,
                     'known': False}]
    assert all(c['known'] for c in report['classes'] if c['label'] != 'dogs')


def test_no_known_test_class_is_an_error_before_any_decoding(capsys, tiny_model, demo_data, tmp_path):
    test = tmp_path / 'test'
    for name in ('dogs', 'cats'):
        (test / name).mkdir(parents=True)
        shutil.copy(sorted((demo_data / 'test' / 'hum').glob('*.wav'))[0], test / name / 'a.wav')
    status, out, err = run(capsys, '--testdir', test, '--modelname', tiny_model, '--json', tmp_path / 'r.json')
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        'ERROR: the model knows none of the test classes: model classes beeps, clicks, hum, '
        'noise_bursts, siren; test folder classes cats, dogs')
    assert 'TESTING MODEL' not in out and 'MAP' not in out and not (tmp_path / 'r.json').exists()


def test_ap_is_reciprocal_rank_and_zero_outside_the_top():
    # defect 7: the original recorded no AP when the label was not listed (the file left MAP,
    # its line showed the previous file's AP); here such a file scores 0 and stays in MAP
    probs = np.array([[0.1, 0.5, 0.05, 0.35], [0.1, 0.5, 0.05, 0.35]])
    rows = [AED_eval.score(probs, ['a', 'b', 'c', 'd'], label, 0.0, 10) for label in 'bdac']
    assert [row['rank'] for row in rows] == [1, 2, 3, 4]  # the 1-based position in the ranking
    assert [row['ap'] for row in rows] == [1.0, 0.5, pytest.approx(1 / 3), 0.25]
    outside = AED_eval.score(probs, ['a', 'b', 'c', 'd'], 'a', 0.0, max_predictions=2)
    assert outside['rank'] is None and outside['ap'] == 0.0 and outside['top_label'] == 'b'


def test_confidence_threshold_does_not_change_ap():
    classes = ['a', 'b', 'c', 'd']
    probs = np.array([[0.6, 0.399999, 1e-6, 0.0]])  # true class 'c' ranked 3rd at 1e-6
    row = AED_eval.score(probs, classes, 'c', threshold=1e-4, max_predictions=10)
    assert row['rank'] == 3 and row['ap'] == pytest.approx(1 / 3)
    # only the listed predictions respect the threshold
    assert [p['label'] for p in row['predictions']] == ['a', 'b']
    # MAX_PREDICTIONS still cuts the ranking
    assert AED_eval.score(probs, classes, 'c', 1e-4, max_predictions=2)['ap'] == 0.0


def test_json_carries_the_checkpoints_training_metadata(capsys, demo_data, tmp_path):
    import torch
    from model.checkpoint import save_checkpoint
    from model.net import AEDNet
    classes = ['beeps', 'clicks', 'hum', 'noise_bursts', 'siren']
    meta = {'classes': classes, 'run_name': 'meta_run', 'epoch': 3, 'im_size': (128, 64), 'im_dim': 1,
            'filters': 2, 'spec': {'length': 3, 'overlap': 2},
            # training-side records: whatever keys a checkpoint has travel into the report
            'augmentation': {'roll': [0.5, (0.0, 0.05)]}, 'learning_rate': {0: 0.001, 55: 1e-6},
            'seed': 7, 'dataset': '/data/spec', 'class_counts': {'beeps': 4, 'hum': 4},
            'optimizer': {'state': {}, 'param_groups': []}, 'rng': torch.zeros(3)}
    save_checkpoint(tmp_path / 'm.pt', AEDNet(5, (128, 64), 1, 2), meta)
    status, _, err = run(capsys, '--testdir', demo_data / 'test', '--modelname', tmp_path / 'm.pt',
                         '--quiet', '--confmatrix', '', '--json', tmp_path / 'r.json')
    assert status == 0, err
    got = json.loads((tmp_path / 'r.json').read_text())['summary']['model_meta']
    assert got == {'classes': classes, 'run_name': 'meta_run', 'epoch': 3, 'im_size': [128, 64],
                   'im_dim': 1, 'filters': 2, 'spec': {'length': 3, 'overlap': 2},
                   'augmentation': {'roll': [0.5, [0.0, 0.05]]},
                   'learning_rate': {'0': 0.001, '55': 1e-6}, 'seed': 7, 'dataset': '/data/spec',
                   'class_counts': {'beeps': 4, 'hum': 4}}  # no weights, optimiser or RNG state


def test_the_confusion_matrix_goes_next_to_the_reports_or_where_typed(capsys, tiny_model, demo_data, tmp_path,
                                                                      monkeypatch):
    # issue 13.4: run from another folder, the plot went into the repository's confmatrix/
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model, '--quiet',
                           '--json', 'reports/r.json')
    assert status == 0, err
    png = tmp_path / 'reports' / 'eval_tiny.png'  # next to the report, EVAL_CONFMATRIX's file name
    assert png.stat().st_size > 1000 and f'CONFUSION MATRIX: {png}' in out.splitlines()
    status, out, _ = run(capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model, '--quiet',
                         '--csv', 'r.csv', '--confmatrix', 'plots/cm_{model}.png')  # typed: from the cwd
    assert status == 0 and f"CONFUSION MATRIX: {tmp_path / 'plots' / 'cm_tiny.png'}" in out.splitlines()
    assert (tmp_path / 'r.csv').exists() and not (tmp_path / 'eval_tiny.png').exists()
    # with no report the default stays in the repository, as config.py's paths do
    args = AED_eval.parse_args(['--modelname', 'x.pt'])
    assert args.confmatrix == AED_eval.ROOT / AED_eval.cfg.EVAL_CONFMATRIX
    assert AED_eval.parse_args(['--csv', 'a/b.csv']).confmatrix == Path('a') / 'eval_{model}.png'
