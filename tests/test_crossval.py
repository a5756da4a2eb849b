"""crossval.sh end to end on the demo data: one extraction, then train and evaluate per fold."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--im-size', '128', '64', '--filters', '4', '--epochs', '1', '--workers', '0']


def crossval(cwd, *args, **env):
    """bash crossval.sh args, run from cwd with this interpreter; returns the finished process."""
    env = {**os.environ, 'PYTHON': sys.executable, **env}
    return subprocess.run(['bash', str(ROOT / 'crossval.sh'), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """The demo with 3 folds (15 one-second clips) cross-validated with a tiny preset."""
    from dataset import make_demo
    work = tmp_path_factory.mktemp('cv')
    make_demo.main(['--out', str(work / 'demo'), '--train', '2', '--test', '1', '--seconds', '1',
                    '--no-examples', '--no-background', '--scenes', '0', '--folds', '3'])
    # relative paths from another folder than the repository's; a non-default overlap that
    # only the linked .spec_settings.json can carry into the checkpoints
    return work, crossval(work, 'csv', 'demo/folds.csv', 'runs', *TINY, SPEC_ARGS='--overlap 1')


def test_demo_cross_validation_end_to_end(demo_run):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = work / 'runs'
    for k in (1, 2, 3):
        assert (runs / f'fold{k}' / 'model' / f'AED_fold{k}_model_best.pt').is_file()
        summary = json.loads((runs / f'fold{k}' / 'eval.json').read_text())['summary']
        assert summary['files'] == 5 and summary['errors'] == 0
        assert summary['test_dir'].endswith(f'fold{k}/test')
        # the fold's model was trained on the two other folds' PNGs only
        trained = summary['model_meta']['training']['dataset']
        assert Path(trained) == (runs / 'data' / f'fold{k}' / 'train').resolve()
        # and records the settings of the PNGs through the linked .spec_settings.json
        spec_settings = json.loads((runs / 'data' / 'spec' / '.spec_settings.json').read_text())
        assert summary['model_meta']['spec'] == spec_settings and spec_settings['overlap'] == 1
    table = proc.stdout[proc.stdout.index('== summary'):].splitlines()
    assert [line.split()[0] for line in table[2:5]] == ['1', '2', '3']
    assert [line.split()[3] for line in table[2:5]] == ['5', '5', '5']  # test files per fold
    assert re.search(r'^MEAN ACCURACY: \d\.\d{4} ± \d\.\d{4}$', proc.stdout, re.M)
    assert re.search(r'^MEAN MAP: \d\.\d{4} ± \d\.\d{4}$', proc.stdout, re.M)
    with open(runs / 'summary.csv', newline='') as f:
        assert [r['fold'] for r in csv.DictReader(f)] == ['1', '2', '3', 'mean', 'std']


def test_every_clip_is_extracted_once(demo_run):
    work, proc = demo_run
    spec = work / 'runs' / 'data' / 'spec'
    extracted = re.findall(r'^(.*) SPECS: 1$', proc.stdout, re.M)
    assert len(extracted) == len(set(extracted)) == 15  # 15 one-second clips, one PNG each
    assert proc.stdout.count('DONE! FILES: 15 SPECS: 15 ERRORS: 0') == 1
    pngs = sorted(spec.rglob('*.png'))
    assert len(pngs) == 15
    # each PNG is linked into the training views of the two folds its clip is not tested in
    linked = [os.readlink(p) for p in (work / 'runs' / 'data').glob('fold*/train/*/*.png')]
    assert sorted(linked) == sorted(str(p) for p in pngs for _ in range(2))


def test_a_failed_fold_is_reported_and_the_loop_goes_on(demo_run):
    work, _ = demo_run
    # a second run into the same folder whose training fails: no stale result may count
    proc = crossval(work, 'csv', 'demo/folds.csv', 'runs', '--filters', '0', '--workers', '0',
                    SPEC_ARGS='--overlap 1')
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if 'failed' in line] == [
        'ERROR: fold 1: AED_train.py failed', 'ERROR: fold 2: AED_train.py failed',
        'ERROR: fold 3: AED_train.py failed', 'ERROR: failed fold(s): 1 2 3']
    assert 'SKIPPED (ALREADY DONE): 15' in proc.stdout  # the spectrograms were not made again
    assert [line for line in proc.stdout.splitlines() if 'FAILED' in line] == [
        '1      FAILED: NO EVAL.JSON', '2      FAILED: NO EVAL.JSON', '3      FAILED: NO EVAL.JSON',
        'FOLDS: 3 SCORED: 0 FAILED: 3 (± is the sample standard deviation over the scored folds)']


@pytest.mark.parametrize('args, error', [
    (['csv', 'x.csv', 'runs', '--run-name', 'mine'], 'ERROR: --run-name: crossval.sh sets it for each fold'),
    (['csv', 'x.csv', 'runs', '--model-path=m'], 'ERROR: --model-path: crossval.sh sets it for each fold'),
    (['csv', 'x.csv'], 'usage: bash crossval.sh FORMAT ROOT RESULTS_DIR [AED_train.py flags...]'),
    (['csv', 'x.csv', 'runs'], 'ERROR: '),  # no metadata: dataset.folds stops the run
])
def test_bad_arguments_stop_before_any_work(tmp_path, args, error):
    proc = crossval(tmp_path, *args)
    assert proc.returncode == 2 and proc.stderr.splitlines()[0].startswith(error)
    assert not (tmp_path / 'runs' / 'data' / 'spec').exists()
