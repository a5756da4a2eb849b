"""dataset.folds: official fold layouts laid out as class folders of symbolic links."""
import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dataset import folds
from helpers import run_main

US8K_COLUMNS = ['slice_file_name', 'fsID', 'start', 'end', 'salience', 'fold', 'classID', 'class']
ESC50_COLUMNS = ['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take']


def write_wav(path, seconds=0.05, rate=8000):
    """A quiet noise clip (silent-ish, never all zero)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(str(path))).normal(0, 0.01, int(seconds * rate))
    sf.write(str(path), noise, rate, subtype='PCM_16', format='WAV')  # whatever the name says


def write_csv(path, columns, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def make_us8k(root, rows=None):
    """UrbanSound8K as shipped: 10 folds, two classes, three slices of each recording (fsID)."""
    if rows is None:
        rows = [[f'{fs}-{cls}-0-{s}.wav', fs, 0, 1, 1, fs % 10 + 1, cls, ['dog_bark', 'siren'][cls]]
                for fs in range(100, 120) for cls in (fs % 2,) for s in range(3)]
    for r in rows:
        write_wav(root / 'audio' / f'fold{r[5]}' / r[0])
    write_csv(root / 'metadata' / 'UrbanSound8K.csv', US8K_COLUMNS, rows)
    return rows


def make_esc50(root):
    """ESC-50 as shipped: 5 folds, four categories (two in ESC-10), two takes per source file."""
    cats = [('dog', True), ('rain', True), ('clock_tick', False), ('wind', False)]
    rows = [[f'{fold}-{src}-{take}-{t}.wav', fold, t, cats[t][0], str(cats[t][1]), f'{src}.ogg', take]
            for fold in range(1, 6) for t in range(4) for src in (fold * 100 + t,) for take in 'AB']
    for r in rows:
        write_wav(root / 'audio' / r[0])
    write_csv(root / 'meta' / 'esc50.csv', ESC50_COLUMNS, rows)
    return rows


def run(capsys, *argv):
    return run_main(folds.main, capsys, *argv)


def links(folder):
    """{path relative to folder: link target} of the symbolic links below folder."""
    return {p.relative_to(folder).as_posix(): Path(os.readlink(p))
            for p in folder.rglob('*') if p.is_symlink()}


def test_urbansound8k_folds_are_linked_test_sets_partition_the_clips(tmp_path, capsys):
    rows = make_us8k(tmp_path / 'US8K')
    code, out, err = run(capsys, 'urbansound8k', tmp_path / 'US8K', '--out', tmp_path / 'cv')
    assert code == 0 and err == ''
    assert out.splitlines()[0].startswith('CLIPS: 60 CLASSES: 2 FOLDS: 10')
    clips = links(tmp_path / 'cv' / 'clips')
    assert len(clips) == len(rows)
    for r in rows:  # every clip once, in its class folder, pointing at the shipped file
        assert clips[f'{r[7]}/{r[0]}'] == tmp_path / 'US8K' / 'audio' / f'fold{r[5]}' / r[0]
    assert not any(p.is_file() and not p.is_symlink() for p in (tmp_path / 'cv').rglob('*'))
    tests = {k: links(tmp_path / 'cv' / f'fold{k}' / 'test') for k in range(1, 11)}
    for k, test in tests.items():
        assert sorted(test) == sorted(f'{r[7]}/{r[0]}' for r in rows if r[5] == k)
        assert f'FOLD {k}: TEST {len(test)} CLIPS' in out
    # no clip in two folds' test sets, and every clip in one
    assert sum(len(t) for t in tests.values()) == len({name for t in tests.values() for name in t})
    assert not (tmp_path / 'cv' / 'fold1' / 'train').exists()  # needs --specs


@pytest.mark.parametrize('how', [['esc10'], ['esc50', '--esc10']])
def test_esc10_is_the_esc10_subset_of_esc50(tmp_path, capsys, how):
    rows = make_esc50(tmp_path / 'ESC-50-master')
    code, out, _ = run(capsys, how[0], tmp_path / 'ESC-50-master', '--out', tmp_path / 'cv', *how[1:])
    assert code == 0
    assert sorted(links(tmp_path / 'cv' / 'clips')) == sorted(
        f'{r[3]}/{r[0]}' for r in rows if r[4] == 'True')
    code, out, _ = run(capsys, 'esc50', tmp_path / 'ESC-50-master', '--out', tmp_path / 'cv')
    assert code == 0 and out.startswith('CLIPS: 40 CLASSES: 4 FOLDS: 5')
    assert len(links(tmp_path / 'cv' / 'clips')) == 40  # the earlier layout was replaced


def fake_specs(spec, clip_links, counts):
    """A spectrogram folder as AED_spec.py writes it for clip_links: <stem>_<n>.png."""
    for rel, count in zip(sorted(clip_links), counts):
        for n in range(count):
            png = spec / Path(rel).parent / f'{Path(rel).stem}_{n}.png'
            png.parent.mkdir(parents=True, exist_ok=True)
            png.write_bytes(b'png')
    (spec / '.spec_settings.json').write_text('{"length": 3}\n')


def test_training_views_link_the_other_folds_pngs_disjoint_by_source(tmp_path, capsys):
    rows = make_esc50(tmp_path / 'esc')
    run(capsys, 'esc50', tmp_path / 'esc', '--out', tmp_path / 'cv')
    clips = links(tmp_path / 'cv' / 'clips')
    counts = [1 + i % 12 for i in range(len(clips))]  # 1 to 12 PNGs per clip
    fake_specs(tmp_path / 'cv' / 'spec', clips, counts)
    code, out, err = run(capsys, 'esc50', tmp_path / 'esc', '--out', tmp_path / 'cv',
                         '--specs', tmp_path / 'cv' / 'spec')
    assert code == 0 and err == ''
    by_file = {r[0]: r for r in rows}
    pngs_of = dict(zip(sorted(clips), counts))
    for k in range(1, 6):
        view = tmp_path / 'cv' / f'fold{k}'
        train = links(view / 'train')
        settings = train.pop('.spec_settings.json')
        assert settings == tmp_path / 'cv' / 'spec' / '.spec_settings.json'
        assert all(target == tmp_path / 'cv' / 'spec' / rel for rel, target in train.items())
        expected = {f'{Path(c).parent}/{Path(c).stem}_{n}.png'
                    for c in clips if by_file[Path(c).name][1] != k for n in range(pngs_of[c])}
        assert set(train) == expected
        # no source file (src_file) on both sides of the split
        test_sources = {by_file[Path(c).name][5] for c in links(view / 'test')}
        train_sources = {by_file[Path(p).name.rsplit('_', 1)[0] + '.wav'][5] for p in train}
        assert test_sources and train_sources and not test_sources & train_sources
        assert f'FOLD {k}: TEST 8 CLIPS TRAIN 32 CLIPS {len(expected)} SPECS' in out


def test_pngs_match_their_clip_exactly_and_shared_stems_get_unique_names(tmp_path, capsys):
    # x, x_1 and x_10 share a prefix; a/x.wav, b/x.wav and x.ogg share a stem in one class
    names = ['x.wav', 'x_1.wav', 'x_10.wav', 'a/x.wav', 'b/x.wav', 'x.ogg', 'x-2.wav', 'y.wav']
    for name in names:
        write_wav(tmp_path / 'data' / name)
    meta = write_csv(tmp_path / 'data' / 'meta.csv', ['file', 'label', 'fold'],
                     [[n, 'cls', 1 + i % 2] for i, n in enumerate(names)] + [['y.wav', 'other', 1]])
    assert run(capsys, 'csv', meta, '--out', tmp_path / 'cv')[0] == 2  # y.wav twice
    write_csv(meta, ['file', 'label', 'fold'], [[n, 'cls', 1 + i % 2] for i, n in enumerate(names)])
    run(capsys, 'csv', meta, '--out', tmp_path / 'cv')
    clips = {rel: target.relative_to(tmp_path / 'data').as_posix()
             for rel, target in links(tmp_path / 'cv' / 'clips').items()}
    assert clips == {'cls/x.wav': 'x.wav', 'cls/x_1.wav': 'x_1.wav', 'cls/x_10.wav': 'x_10.wav',
                     'cls/x-3.wav': 'a/x.wav', 'cls/x-4.wav': 'b/x.wav', 'cls/x-5.ogg': 'x.ogg',
                     'cls/x-2.wav': 'x-2.wav', 'cls/y.wav': 'y.wav'}
    assert len({Path(c).stem.casefold() for c in clips}) == len(clips)
    # sorted: x-2 x-3 x-4 x-5 x x_1 x_10 y; x has x_0 ... x_11, so x_1.png and x_10.png too
    fake_specs(tmp_path / 'spec', clips, [1, 1, 1, 1, 12, 3, 2, 1])
    run(capsys, 'csv', meta, '--out', tmp_path / 'cv', '--specs', tmp_path / 'spec')
    train1 = set(links(tmp_path / 'cv' / 'fold1' / 'train' / 'cls'))  # the fold-2 clips' PNGs
    assert train1 == {'x-3_0.png', 'x-5_0.png', 'x_1_0.png', 'x_1_1.png', 'x_1_2.png', 'y_0.png'}
    train2 = set(links(tmp_path / 'cv' / 'fold2' / 'train' / 'cls'))
    assert train2 == {'x-2_0.png', 'x-4_0.png', 'x_10_0.png', 'x_10_1.png'} | \
        {f'x_{n}.png' for n in range(12)}


def test_a_clip_shorter_than_a_window_gives_one_spectrogram_in_training(tmp_path, capsys):
    import AED_spec
    write_wav(tmp_path / 'data' / 'short.wav', seconds=0.4, rate=22050)
    write_wav(tmp_path / 'data' / 'long.wav', seconds=4.0, rate=22050)
    meta = write_csv(tmp_path / 'data' / 'meta.csv', ['file', 'label', 'fold'],
                     [['short.wav', 'a', 1], ['long.wav', 'a', 2]])
    run(capsys, 'csv', meta, '--out', tmp_path / 'cv')
    AED_spec.main(['--src', str(tmp_path / 'cv' / 'clips'), '--dst', str(tmp_path / 'spec'),
                   '--workers', '1'])
    assert re.search(r'short\.wav SAMPLE RATE: 22050 SPECS: 1$', capsys.readouterr().out, re.M)
    code, out, _ = run(capsys, 'csv', meta, '--out', tmp_path / 'cv', '--specs', tmp_path / 'spec')
    assert code == 0
    assert sorted(links(tmp_path / 'cv' / 'fold2' / 'train' / 'a')) == ['short_0.png']
    long_pngs = sorted(p.name for p in (tmp_path / 'spec' / 'a').glob('long_*.png'))
    assert len(long_pngs) > 1 and sorted(links(tmp_path / 'cv' / 'fold1' / 'train' / 'a')) == long_pngs
    assert 'FOLD 2: TEST 1 CLIPS TRAIN 1 CLIPS 1 SPECS' in out


def test_a_new_layout_removes_the_old_links_only(tmp_path, capsys):
    make_us8k(tmp_path / 'US8K')
    run(capsys, 'urbansound8k', tmp_path / 'US8K', '--out', tmp_path / 'cv')
    (tmp_path / 'cv' / 'fold3' / 'notes.txt').write_text('mine')
    code, out, _ = run(capsys, 'urbansound8k', tmp_path / 'US8K', '--out', tmp_path / 'cv',
                       '--fold', 2, 5)
    assert code == 0 and [line.split(':')[0] for line in out.splitlines()[1:]] == ['FOLD 2', 'FOLD 5']
    assert sorted(p.name for p in (tmp_path / 'cv').iterdir()) == ['clips', 'fold2', 'fold3', 'fold5']
    assert [p.name for p in (tmp_path / 'cv' / 'fold3').rglob('*')] == ['notes.txt']
    assert len(links(tmp_path / 'cv' / 'clips')) == 60  # training draws on every fold


########################## bad input ##########################

def generic(tmp_path, rows, columns=('file', 'label', 'fold')):
    for r in rows:
        if not str(r[0]).startswith('missing'):
            write_wav(tmp_path / 'data' / r[0])
    return write_csv(tmp_path / 'data' / 'meta.csv', columns, rows)


def bad_run(tmp_path, capsys, *argv):
    """Exit status and ERROR lines of a run that must stop before laying anything out."""
    code, out, err = run(capsys, *argv, '--out', tmp_path / 'cv')
    assert out == '' and not (tmp_path / 'cv').exists()
    return code, [line for line in err.splitlines() if line.startswith('ERROR')]


def test_missing_column(tmp_path, capsys):
    meta = generic(tmp_path, [['a.wav', 'x']], columns=('file', 'label'))
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2 and errors == [f'ERROR: {meta}: no column fold (it has: file, label)']
    (tmp_path / 'esc' / 'meta').mkdir(parents=True)
    write_csv(tmp_path / 'esc' / 'meta' / 'esc50.csv', ESC50_COLUMNS[:4], [])
    code, errors = bad_run(tmp_path, capsys, 'esc10', tmp_path / 'esc')
    assert code == 2 and len(errors) == 1 and 'no column src_file, esc10' in errors[0]


def test_missing_metadata_or_unreadable_csv(tmp_path, capsys):
    code, errors = bad_run(tmp_path, capsys, 'urbansound8k', tmp_path)
    assert code == 2 and len(errors) == 1 and 'UrbanSound8K.csv' in errors[0]
    (tmp_path / 'bad.csv').write_bytes(b'file,label,fold\n\xff\xfe,a,1\n')
    code, errors = bad_run(tmp_path, capsys, 'csv', tmp_path / 'bad.csv')
    assert code == 2 and len(errors) == 1 and 'UnicodeDecodeError' in errors[0]


def test_missing_file_stops_unless_skip_missing(tmp_path, capsys):
    rows = [['a.wav', 'x', 1], ['missing.wav', 'x', 1], ['b.wav', 'x', 2], ['c.wav', 'y', 2]]
    meta = generic(tmp_path, rows)
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2
    assert errors[0] == f'ERROR: {meta} line 3: {tmp_path / "data" / "missing.wav"}: file not found'
    code, out, err = run(capsys, 'csv', meta, '--out', tmp_path / 'cv', '--skip-missing')
    assert code == 0 and err.splitlines() == [errors[0] + ', skipped']
    assert sorted(links(tmp_path / 'cv' / 'clips')) == ['x/a.wav', 'x/b.wav', 'y/c.wav']


@pytest.mark.parametrize('fold, why', [('0', "fold '0' is out of range (at least 1)"),
                                       ('two', "fold 'two' is out of range"), ('', "fold ''")])
def test_fold_out_of_range_in_a_generic_csv(tmp_path, capsys, fold, why):
    meta = generic(tmp_path, [['a.wav', 'x', 1], ['b.wav', 'x', fold], ['c.wav', 'x', 2]])
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2 and errors[0].startswith(f'ERROR: {meta} line 3: b.wav: {why}')


def test_fold_out_of_range_in_urbansound8k_and_fold_flag_not_among_the_folds(tmp_path, capsys):
    make_us8k(tmp_path / 'US8K', [['1-0-0-0.wav', 1, 0, 1, 1, 1, 0, 'dog'],
                                  ['2-0-0-0.wav', 2, 0, 1, 1, 11, 0, 'dog']])
    code, errors = bad_run(tmp_path, capsys, 'urbansound8k', tmp_path / 'US8K')
    csv_path = tmp_path / 'US8K' / 'metadata' / 'UrbanSound8K.csv'
    assert code == 2
    assert errors[0] == f"ERROR: {csv_path} line 3: 2-0-0-0.wav: fold '11' is out of range (1 to 10)"
    make_us8k(tmp_path / 'US8K')
    code, errors = bad_run(tmp_path, capsys, 'urbansound8k', tmp_path / 'US8K', '--fold', 3, 12, 0)
    assert code == 2 and errors == [
        'ERROR: --fold 12 0: not among the folds of the metadata (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)']


def test_one_fold_is_no_cross_validation(tmp_path, capsys):
    meta = generic(tmp_path, [['a.wav', 'x', 1], ['b.wav', 'y', 1]])
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2 and 'needs at least 2 folds, found [1]' in errors[0]


def test_unsafe_class_names_are_made_safe_and_reported(tmp_path, capsys):
    meta = generic(tmp_path, [['a.wav', 'dogs/cats', 1], ['b.wav', '.hidden', 2],
                              ['c.wav', ' dogs/cats ', 2], ['d.wav', 'ok', 1]])
    code, out, err = run(capsys, 'csv', meta, '--out', tmp_path / 'cv')
    assert code == 0
    assert err.splitlines() == [
        f"WARNING: {meta} line 2: class 'dogs/cats' is not a valid folder name; its folder is 'dogs_cats'",
        f"WARNING: {meta} line 3: class '.hidden' is not a valid folder name; its folder is '_hidden'"]
    assert sorted(links(tmp_path / 'cv' / 'clips')) == ['_hidden/b.wav', 'dogs_cats/a.wav',
                                                        'dogs_cats/c.wav', 'ok/d.wav']
    meta = generic(tmp_path / 'b', [['a.wav', 'dogs/cats', 1], ['b.wav', 'dogs_cats', 2], ['c.wav', '', 2]])
    code, errors = bad_run(tmp_path / 'b', capsys, 'csv', meta)
    assert code == 2
    assert errors[0] == f'ERROR: {meta} line 4: c.wav: no usable class name in column label'
    assert errors[1] == f"ERROR: {meta}: classes 'dogs/cats', 'dogs_cats' would share the folder 'dogs_cats'"


def test_the_same_clip_listed_twice(tmp_path, capsys):
    meta = generic(tmp_path, [['a.wav', 'x', 1], ['b.wav', 'x', 2], ['./a.wav', 'y', 2]])
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2 and errors[0] == f'ERROR: {meta} line 4: ./a.wav: the same clip as line 2, listed twice'


def test_a_source_split_across_folds_is_refused(tmp_path, capsys):
    rows = [['a.wav', 'x', 1, 'rec1'], ['b.wav', 'x', 2, 'rec2'], ['c.wav', 'x', 2, 'rec1']]
    meta = generic(tmp_path, rows, columns=('file', 'label', 'fold', 'source'))
    code, errors = bad_run(tmp_path, capsys, 'csv', meta)
    assert code == 2 and errors[0].startswith(
        f'ERROR: {meta} line 4: c.wav: source rec1 is in fold 2 and in fold 1 (line 2)')
    us8k = make_us8k(tmp_path / 'US8K')
    us8k[4][5] = us8k[3][5] % 10 + 1  # one slice of a recording moved to the next fold
    make_us8k(tmp_path / 'US8K', us8k)
    code, errors = bad_run(tmp_path, capsys, 'urbansound8k', tmp_path / 'US8K')
    assert code == 2 and len(errors) == 2 and 'line 6: 101-1-0-1.wav: fsID 101 is in fold 3' in errors[0]


def test_specs_folder_must_be_aed_spec_output(tmp_path, capsys):
    meta = generic(tmp_path, [['a.wav', 'x', 1], ['b.wav', 'x', 2]])
    (tmp_path / 'spec').mkdir()
    code, errors = bad_run(tmp_path, capsys, 'csv', meta, '--specs', tmp_path / 'spec')
    assert code == 2 and errors[0].startswith(f'ERROR: --specs {tmp_path / "spec"}: no .spec_settings.json')


def test_make_demo_folds_writes_a_generic_csv_and_leaves_the_rest_unchanged(tmp_path, capsys):
    from dataset import make_demo
    tiny = ['--train', '2', '--test', '1', '--seconds', '1', '--example-seconds', '1', '--scenes', '0']
    make_demo.main(['--out', str(tmp_path / 'plain')] + tiny)
    make_demo.main(['--out', str(tmp_path / 'cv')] + tiny + ['--folds', '3'])
    assert f"wrote {tmp_path / 'cv' / 'folds.csv'} (3 folds)" in capsys.readouterr().out
    plain = sorted(p.relative_to(tmp_path / 'plain') for p in (tmp_path / 'plain').rglob('*.*'))
    assert sorted(p.relative_to(tmp_path / 'cv') for p in (tmp_path / 'cv').rglob('*.*')) == \
        sorted(plain + [Path('folds.csv')])
    for rel in plain:
        assert (tmp_path / 'plain' / rel).read_bytes() == (tmp_path / 'cv' / rel).read_bytes()
    with open(tmp_path / 'cv' / 'folds.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert sorted(r['file'] for r in rows) == sorted(
        p.as_posix() for p in plain if p.parts[0] in ('train', 'test'))
    classes = [*make_demo.CLASSES, make_demo.BACKGROUND]
    assert {(r['label'], r['fold']) for r in rows} == {(c, str(k)) for c in classes for k in (1, 2, 3)}
    assert all(Path(r['file']).parent.name == r['label'] for r in rows)


@pytest.mark.parametrize('k', ['1', '4'])
def test_make_demo_folds_needs_two_folds_and_a_file_per_fold(tmp_path, k):
    from dataset import make_demo
    with pytest.raises(SystemExit):
        make_demo.main(['--out', str(tmp_path), '--train', '2', '--test', '1', '--folds', k])
    assert not any(tmp_path.iterdir())


########################## dataset.summarize ##########################

def eval_report(folder, accuracy, map_, files=10, errors=0):
    folder.mkdir(parents=True, exist_ok=True)
    summary = {'accuracy': accuracy, 'map': map_, 'files': files, 'errors': errors, 'scored': files - errors}
    (folder / 'eval.json').write_text(json.dumps({'summary': summary, 'classes': [], 'files': []}))


def test_summary_averages_the_scored_folds_and_lists_the_failed(tmp_path, capsys):
    from dataset import summarize
    eval_report(tmp_path / 'fold1', 0.8, 0.9, files=12, errors=1)
    eval_report(tmp_path / 'fold2', 0.6, 0.7)
    (tmp_path / 'fold3').mkdir()                                   # training failed
    (tmp_path / 'fold4').mkdir()
    (tmp_path / 'fold4' / 'eval.json').write_text('{"files": []}')  # no summary
    eval_report(tmp_path / 'fold10', 0.7, 0.8, files=3, errors=3)   # nothing scored
    (tmp_path / 'fold11').mkdir()
    (tmp_path / 'fold11' / 'eval.json').write_text('{"summary": ')  # cut short
    assert summarize.main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        '1        0.8000   0.9000     12      1',
        '2        0.6000   0.7000     10      0',
        '3      FAILED: NO EVAL.JSON',
        "4      FAILED: EVAL.JSON: KEYERROR: 'SUMMARY'",
        '10     FAILED: NO TEST FILE COULD BE SCORED',
        lines[6],
        'MEAN ACCURACY: 0.7000 ± 0.1414',  # sample std (n - 1) of 0.8 and 0.6; population: 0.1000
        'MEAN MAP: 0.8000 ± 0.1414',
        'FOLDS: 6 SCORED: 2 FAILED: 4 (± is the sample standard deviation over the scored folds)',
        f"SUMMARY CSV: {tmp_path / 'summary.csv'}"]
    assert lines[6].startswith('11     FAILED: EVAL.JSON: JSONDECODEERROR')
    with open(tmp_path / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['fold'] for r in rows] == ['1', '2', '3', '4', '10', '11', 'mean', 'std']
    assert [r['status'] for r in rows[:3]] == ['ok', 'ok', 'failed: no eval.json']
    assert rows[0]['accuracy'] == '0.8' and rows[0]['files'] == '12' and rows[2]['accuracy'] == ''
    assert rows[6]['accuracy'] == '0.7' and rows[7]['map'] == '0.141421' and rows[7]['status'] == '2 scored'


def test_summary_of_named_folds_counts_a_missing_one_as_failed(tmp_path, capsys):
    from dataset import summarize
    eval_report(tmp_path / 'fold1', 0.5, 0.6)
    eval_report(tmp_path / 'fold7', 0.25, 0.5)  # another run's fold: not asked for
    assert summarize.main([str(tmp_path), '--fold', '1', '2', '--csv', str(tmp_path / 'x' / 's.csv')]) == 1
    out = capsys.readouterr().out
    assert '2      FAILED: NO EVAL.JSON' in out and '\n7 ' not in out
    assert 'MEAN ACCURACY: 0.5000 ± n/a' in out and (tmp_path / 'x' / 's.csv').is_file()
    eval_report(tmp_path / 'fold2', 0.75, 0.8)
    assert summarize.main([str(tmp_path), '--fold', '1', '2']) == 0
    assert 'MEAN ACCURACY: 0.6250 ± 0.1768' in capsys.readouterr().out


def test_summary_without_folds(tmp_path, capsys):
    from dataset import summarize
    with pytest.raises(SystemExit) as e:
        summarize.main([str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith(f'ERROR: {tmp_path}: no fold')
