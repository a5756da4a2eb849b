"""AED_eval.py: per-file lines, summary, per-class table, reports, bad files, unknown classes."""
import csv
import json
import re
import shutil

import pytest

import AED_eval


def run(capsys, *argv):
    """(exit status, stdout, stderr) of AED_eval.main."""
    try:
        AED_eval.main([str(a) for a in argv])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


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

    rows = list(csv.DictReader(open(tmp_path / 'r.csv')))
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
    rows = {r['path'].rsplit('/', 1)[-1]: r for r in csv.DictReader(open(tmp_path / 'r.csv'))}
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
