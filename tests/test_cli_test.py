"""AED_test.py: file arguments, the original's output lines, --json, --timeline, errors."""
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import AED_test
from helpers import run_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def examples(demo_data):
    return sorted((demo_data / 'examples').glob('*.wav'))


def run(capsys, *argv):
    return run_main(AED_test.main, capsys, *argv)


def files_tested(out):
    return [line.split('TESTING: ', 1)[1] for line in out.splitlines() if line.startswith('TESTING: ')]


def test_single_file_prints_the_original_lines(capsys, tiny_model, examples):
    status, out, err = run(capsys, '--filenames', examples[2], '--modelname', tiny_model)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == 'IMPORTING MODEL... DONE!'
    assert lines[1] == f'TESTING: {examples[2]}'
    assert lines[2] == 'SAMPLE RATE: 44100 TOP PREDICTION(S):'
    results = [line for line in lines if line.startswith('\t')]
    assert 1 <= len(results) <= 5
    assert all(re.fullmatch(r'\t\w+ \d{1,3} %', line) for line in results)
    assert re.fullmatch(r'PREDICTION FOR 4 SPECS TOOK \d+ ms \( \d+ ms/spec \)', lines[-2])
    assert lines[-1] == ''


def test_list_form_several_paths_folder_and_glob(capsys, tiny_model, examples, demo_data):
    a, b = str(examples[0]), str(examples[1])
    # defect 8: the original treated the list as one file name
    status, out, _ = run(capsys, '--filenames', f"['{a}', '{b}']", '--modelname', tiny_model,
                         '--results', 1)
    assert status == 0 and files_tested(out) == [a, b]
    assert sum(line.startswith('\t') for line in out.splitlines()) == 2  # --results 1

    status, out, _ = run(capsys, '--filenames', a, b, str(examples[4]), '--modelname', tiny_model)
    assert status == 0 and files_tested(out) == [a, b, str(examples[4])]

    status, out, _ = run(capsys, '--filenames', demo_data / 'examples', '--modelname', tiny_model)
    assert status == 0 and files_tested(out) == [str(p) for p in examples]

    pattern = str(demo_data / 'examples' / 's*.wav')  # quoted: the script expands it
    status, out, _ = run(capsys, '--filenames', pattern, '--modelname', tiny_model)
    assert status == 0 and files_tested(out) == [str(p) for p in examples if p.name.startswith('s')]


def test_list_form_is_parsed_as_a_literal_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a.wav').write_bytes(b'')
    assert AED_test.expand_filenames(["['a.wav', 'b.wav']"]) == [('a.wav', None), ('b.wav', 'no such file')]
    code = "[__import__('pathlib').Path('ran').touch()]"
    assert AED_test.expand_filenames([code]) == [(code, 'no file matches this pattern')]
    assert not (tmp_path / 'ran').exists()
    assert AED_test.expand_filenames(['[ab]*.wav']) == [('a.wav', None)]  # a glob pattern stays a pattern


def test_json_lines(capsys, tiny_model, examples):
    status, out, err = run(capsys, '--filenames', examples[0], examples[3], '--modelname', tiny_model,
                           '--json', '--confidence', 0)
    assert status == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r['file'] for r in records] == [str(examples[0]), str(examples[3])]
    for r in records:
        assert r['sample_rate'] == 44100 and r['specs'] == 4
        confs = [p['confidence'] for p in r['predictions']]
        assert len(confs) == 5 and confs == sorted(confs, reverse=True)
        assert sum(confs) == pytest.approx(1, abs=1e-4)
        assert 'timeline' not in r


def tone_file(path, seconds):
    t = np.arange(int(seconds * 44100)) / 44100
    sf.write(path, 0.2 * np.sin(2 * np.pi * 1000 * t), 44100)
    return path


def test_the_time_runs_from_opening_the_file_to_its_last_prediction(capsys, tiny_model, tmp_path,
                                                                    monkeypatch):
    # issue 16.2.7: "PREDICTION FOR N SPECS TOOK" (and --json's ms) left out the first block's decoding
    import model.stream as stream
    ms = {}
    for seconds in (4, 4, 120):  # the first run warms the network up
        start = time.perf_counter()
        status, out, _ = run(capsys, '--filenames', tone_file(tmp_path / f'{seconds}.wav', seconds),
                             '--modelname', tiny_model, '--json')
        wall = time.perf_counter() - start
        (record,) = [json.loads(line) for line in out.splitlines()]
        assert status == 0 and record['specs'] == seconds and 0 < record['ms'] <= wall * 1000
        ms[seconds] = record['ms']
    assert ms[120] > ms[4]  # 30 times the windows
    real = stream._read

    def slow_read(*args, **kwargs):  # decoding this file takes 0.4 s more
        time.sleep(0.4)
        return real(*args, **kwargs)
    monkeypatch.setattr(stream, '_read', slow_read)  # one file on a CPU is decoded here
    status, out, _ = run(capsys, '--filenames', tmp_path / '4.wav', '--modelname', tiny_model)
    took = int(re.search(r'^PREDICTION FOR 4 SPECS TOOK (\d+) ms', out, re.M).group(1))
    assert status == 0 and took >= 400


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_long_file_shows_a_progress_bar_on_a_terminal_only(capsys, tiny_model, tmp_path, monkeypatch):
    # issue 13.7: a file of more than PROGRESS_MIN_WINDOWS windows gets a bar on stderr
    monkeypatch.setattr(AED_test, 'PROGRESS_MIN_WINDOWS', 10)
    files = [tone_file(tmp_path / 'long.wav', 30), tone_file(tmp_path / 'short.wav', 6)]
    for terminal, extra in ((True, []), (True, ['--json']), (False, [])):
        err = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, 'stderr', err)
        status, out, _ = run(capsys, '--filenames', *files, '--modelname', tiny_model, *extra)
        assert status == 0 and files_tested(out) == ([] if extra else [str(f) for f in files])
        bars = re.findall(r'(\S+\.wav):\s+\d+%.*?(\d+)/(\d+)', err.getvalue())
        if terminal and not extra:
            assert {name for name, _, _ in bars} == {'long.wav'} and bars[0][2] == '30'
            assert err.getvalue().count('long.wav:   0%') == 1  # one bar for its two blocks
        else:
            assert bars == [] and err.getvalue() == ''


def test_compile_says_what_it_does_and_warns_on_a_short_cpu_run(capsys, tiny_model, examples, monkeypatch):
    # issue 13.3: compiling took 23 s on a CPU with no message; it is done first, timed, and
    # a CPU run of fewer than a few hundred windows is warned that it will not pay off
    import torch
    calls = []

    def fake_compile(net):
        calls.append(net)
        return net
    monkeypatch.setattr(torch, 'compile', fake_compile)
    cpu = ['--device', 'cpu']  # the warning is for CPUs (on a CUDA machine auto picks the GPU)
    status, plain, _ = run(capsys, '--filenames', examples[0], '--modelname', tiny_model, '--json', *cpu)
    status, out, err = run(capsys, '--filenames', examples[0], '--modelname', tiny_model, '--json',
                           '--compile', *cpu)
    assert status == 0 and len(calls) == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith('WARNING: --compile on a CPU for 4 windows: compiling will cost more than it '
                               'saves (it pays off on a GPU and on long runs)')
    assert re.fullmatch(r'COMPILING\.\.\. DONE! \(\d+\.\d s\)', lines[1])
    assert [r['predictions'] for r in map(json.loads, out.splitlines())] == \
        [r['predictions'] for r in map(json.loads, plain.splitlines())]


def test_timeline_window_bounds_of_a_10_s_file(capsys, tiny_model, tmp_path):
    t = np.arange(10 * 44100) / 44100
    sf.write(tmp_path / 'ten.wav', 0.2 * np.sin(2 * np.pi * 1000 * t), 44100)
    status, out, _ = run(capsys, '--filenames', tmp_path / 'ten.wav', '--modelname', tiny_model,
                         '--speclength', 3, '--overlap', 2, '--timeline', '--json')
    assert status == 0
    (record,) = [json.loads(line) for line in out.splitlines()]
    # 1 s steps; chunks of at least 1 s are kept, the tail ones shorter than 3 s
    expected = [(i, min(i + 3, 10)) for i in range(10)]
    assert [(w['start'], w['end']) for w in record['timeline']] == expected
    assert record['specs'] == 10

    status, out, _ = run(capsys, '--filenames', tmp_path / 'ten.wav', '--modelname', tiny_model,
                         '--timeline')
    windows = re.findall(r'^\t(\d+\.\d\d)-(\d+\.\d\d) s \w+ \d+ %$', out, flags=re.M)
    assert [(float(a), float(b)) for a, b in windows] == expected


def test_bad_files_are_reported_and_the_rest_still_run(capsys, tiny_model, examples, tmp_path):
    broken = tmp_path / 'broken.wav'
    broken.write_bytes(b'RIFF....WAVEfmt this is no audio')
    status, out, err = run(capsys, '--filenames', examples[0], broken, tmp_path / 'missing.wav',
                           str(tmp_path / 'nomatch*.wav'), examples[1], '--modelname', tiny_model)
    assert status == 1
    assert out.count('SAMPLE RATE: 44100 TOP PREDICTION(S):') == 2
    errors = err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith('ERROR: ') for line in errors)
    assert errors[0].startswith(f'ERROR: {broken}: ')
    assert 'no such file' in errors[1] and 'no file matches' in errors[2]

    status, out, err = run(capsys, '--filenames', broken, examples[0], '--modelname', tiny_model, '--json')
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 1 and 'error' in records[0] and records[1]['predictions']


def test_missing_or_foreign_model_is_one_clear_error(capsys, tmp_path, examples):
    status, out, err = run(capsys, '--filenames', examples[0], '--modelname', tmp_path / 'none.pt')
    assert status == 2 and 'TESTING' not in out
    assert err.strip().count('\n') == 0 and err.startswith('ERROR: ') and 'not found' in err
    fake = tmp_path / 'fake.pt'
    fake.write_bytes(b'\x00' * 64)
    status, _, err = run(capsys, '--filenames', examples[0], '--modelname', fake, '--json')
    assert status == 2 and err.strip().count('\n') == 0 and err.startswith(f'ERROR: {fake}')


def test_process_exit_status_without_traceback(tmp_path, examples):
    done = subprocess.run([sys.executable, str(ROOT / 'AED_test.py'), '--filenames', str(examples[0]),
                           '--modelname', str(tmp_path / 'absent.pt')],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert 'Traceback' not in done.stderr and done.stderr.startswith('ERROR: ')


def test_help_shows_no_default_for_the_required_filenames_and_says_what_results_means(capsys):
    import AED_eval
    helps = []
    for main in (AED_test.main, AED_eval.main):
        with pytest.raises(SystemExit) as info:
            main(['-h'])
        assert info.value.code == 0
        helps.append(' '.join(capsys.readouterr().out.split()))  # undo argparse's line wrapping
    test_help, eval_help = helps
    filenames = test_help.split('--filenames PATH [PATH ...]', 2)[2].split('--modelname', 1)[0]
    assert 'default' not in filenames
    assert 'ranked results PRINTED per file' in test_help and '(default: 5)' in test_help
    for text in helps:
        assert 'pays off on a GPU and on long runs' in text
    assert 'ranked predictions KEPT per file for AP' in eval_help and '(default: 10)' in eval_help
