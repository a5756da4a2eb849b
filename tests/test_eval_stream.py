"""AED_eval/AED_test through the streaming front end: the same results as a simple
independent path, bugs that surface as tracebacks, and evaluation under torchrun."""
import json
import os
import re
import shutil
import socket
import sys
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import AED_eval
import AED_test
from helpers import run_main
from model.audio import file_spectrograms
from model.inference import prediction_pooling, prepare_windows, rank_predictions
from model.session import load_model



def test_eval_results_equal_a_simple_independent_path(capsys, tiny_model, demo_data, tmp_path):
    # numpy spectrograms of each whole file -> prepare_windows -> net -> softmax -> mean
    status, out, err = run_main(AED_eval.main, capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                           '--confmatrix', '', '--batch-size', 5, '--workers', 2, '--json', tmp_path / 'r.json')
    assert status == 0, err
    model = load_model(tiny_model, tmp_path, 'cpu')
    files = json.loads((tmp_path / 'r.json').read_text())['files']
    aps = []
    for f in files:
        specs, *_ = file_spectrograms(f['path'], 3, 2, 44100, 'linear')
        with torch.no_grad():
            probs = torch.softmax(model.net(prepare_windows(specs, model.im_size)), 1).numpy()
        pooled = prediction_pooling(probs)
        ranked = rank_predictions(pooled, model.classes, 0.0, 10)  # the confidence cut never changes AP
        rank = [label for label, _ in ranked].index(f['true_label']) + 1
        assert f['top_label'] == ranked[0][0] and f['rank'] == rank
        assert f['confidence'] == pytest.approx(float(pooled.max()), abs=1e-5)
        aps.append(1 / rank)
    assert float(re.search(r'^MAP: (\S+)$', out, re.M).group(1)) == pytest.approx(np.mean(aps), abs=1e-4)


def test_a_bug_in_aed_test_is_a_traceback_not_an_error_line(capsys, tiny_model, demo_data, monkeypatch):
    import model.inference as inference

    def broken(*args, **kwargs):
        raise TypeError('a bug in the spectrogram code')
    monkeypatch.setattr(inference, 'spectrograms', broken)
    wav = sorted((demo_data / 'examples').glob('*.wav'))[0]
    with pytest.raises(TypeError, match='a bug'):
        AED_test.main(['--filenames', str(wav), '--modelname', str(tiny_model)])
    assert 'ERROR' not in capsys.readouterr().err


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def eval_rank(rank, world, port, argv, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # the files take file descriptors 1 and 2 too, so what C++ libraries print lands there as well
    sys.stdout = open(out_dir / f'rank{rank}.out', 'w')
    sys.stderr = open(out_dir / f'rank{rank}.err', 'w')
    os.dup2(sys.stdout.fileno(), 1)
    os.dup2(sys.stderr.fileno(), 2)
    real = AED_eval.predict_files

    def predict_files(model, paths, *args):  # record this rank's share
        (out_dir / f'rank{rank}.paths').write_text(json.dumps([str(p) for p in paths]))
        return real(model, paths, *args)
    AED_eval.predict_files = predict_files  # a fresh process: nothing to restore
    try:
        AED_eval.main(argv + ['--json', str(out_dir / f'rank{rank}.json')])
    except SystemExit as e:
        (out_dir / f'rank{rank}.exit').write_text(str(e.code))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def rounded(value):
    """value with every float rounded to 6 decimals (lists and dicts walked)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return {k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else value


def comparable(out):
    """AED_eval's per-file lines, summary and class table (not the timing or file names of reports)."""
    return [line for line in out.splitlines() if not line.startswith(('JSON REPORT', 'CSV REPORT'))]


def test_torchrun_two_processes_print_what_one_prints(capsys, tiny_model, demo_data, tmp_path):
    test = tmp_path / 'test'
    shutil.copytree(demo_data / 'test', test)
    (test / 'siren' / 'zz_corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEbroken')  # rank 1's share
    argv = ['--testdir', str(test), '--modelname', str(tiny_model), '--confmatrix', '', '--workers', '1',
            '--batch-size', '4']
    status, one, err = run_main(AED_eval.main, capsys, *argv, '--json', tmp_path / 'one.json')
    assert status == 1 and 'ERRORS: 1 / 11' in one and err.count('ERROR: ') == 1
    context = mp.start_processes(eval_rank, args=(2, free_port(), argv, tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + 120  # a hung process group fails the test, never the suite
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail('the 2-process evaluation did not finish within 120 s')
    two = (tmp_path / 'rank0.out').read_text()
    assert comparable(two) == comparable(one)  # only our lines: gloo's connection lines went to stderr
    assert '[Gloo]' not in two
    assert len(re.findall(r'^\d+ \S+ LABEL:', two, re.M)) == 10
    assert (tmp_path / 'rank0.err').read_text().count('ERROR: ') == 1
    assert (tmp_path / 'rank0.exit').read_text() == '1'  # the corrupt file, as one process exits
    shares = [json.loads((tmp_path / f'rank{r}.paths').read_text()) for r in (0, 1)]
    assert [len(s) for s in shares] == [5, 6] and shares[1][-1].endswith('zz_corrupt.wav')
    assert (tmp_path / 'rank1.out').read_text() == '' and not (tmp_path / 'rank1.json').exists()
    reports = [json.loads(p.read_text()) for p in (tmp_path / 'one.json', tmp_path / 'rank0.json')]
    assert reports[0]['files'] == reports[1]['files'] and reports[0]['classes'] == reports[1]['classes']
    assert reports[1]['summary']['errors'] == 1 and reports[1]['summary']['files'] == 11


def test_results_are_gathered_through_gloo_whatever_the_device(monkeypatch, tmp_path):
    # issue 16.2.5: CUDA results went through NCCL, whose watchdog can end a rank waiting for
    # an unbalanced share; gloo (with a long, explicit timeout) takes pickled CPU objects
    import types
    import torch.distributed as dist
    calls = []
    real_init = dist.init_process_group

    def init(backend=None, **kwargs):
        calls.append((backend, kwargs.get('timeout')))
        return real_init('gloo', **kwargs)  # a CPU machine has no NCCL: run the group on gloo anyway
    monkeypatch.setattr(dist, 'init_process_group', init)
    def predict_files(model, paths, settings, batch_size, workers):
        return iter([{'path': p} for p in paths])
    monkeypatch.setattr(AED_eval, 'predict_files', predict_files)
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    cuda_model = types.SimpleNamespace(device=torch.device('cuda'))
    got = list(AED_eval.predict_sharded(cuda_model, ['a.wav', 'b.wav'], {}, 8, 0, (0, 1, 0)))
    assert [r['path'] for r in got] == ['a.wav', 'b.wav']
    assert calls == [('gloo', AED_eval.GATHER_TIMEOUT)] and AED_eval.GATHER_TIMEOUT.total_seconds() >= 3600


def test_an_explicit_gpu_under_torchrun_is_one_error(capsys, monkeypatch, tiny_model, demo_data):
    # every process would take that one GPU; each takes its local rank's instead (--device cuda)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    status, out, err = run_main(AED_eval.main, capsys, '--testdir', demo_data / 'test', '--modelname', tiny_model,
                           '--device', 'cuda:1')
    assert status == 2 and out == ''
    assert err.startswith("ERROR: DEVICE (--device) is 'cuda:1', but under torchrun each process takes the "
                          "GPU of its local rank") and err.count('\n') == 1


def test_torchrun_scores_annotated_recordings_as_one_process_does(capsys, tiny_model, tmp_path):
    # --annotations: each rank predicts its share of the recordings, rank 0 gathers the probabilities,
    # detects the events and scores them all
    from dataset import make_demo
    make_demo.main(['--out', str(tmp_path / 'd'), '--train', '0', '--test', '0', '--no-examples',
                    '--no-background', '--scenes', '3', '--scene-seconds', '8'])
    recordings, annotations = tmp_path / 'd' / 'scenes' / 'wav', tmp_path / 'd' / 'scenes' / 'annotations'
    (recordings / 'zz_corrupt.wav').write_bytes(b'RIFF\x00\x00\x00\x00WAVEbroken')  # rank 1's share
    (annotations / 'zz_corrupt.txt').write_text('1\t2\tsiren\n')
    capsys.readouterr()
    argv = ['--testdir', str(recordings), '--annotations', str(annotations), '--modelname', str(tiny_model),
            '--workers', '1', '--batch-size', '4', '--threshold', '0.3']
    status, one, err = run_main(AED_eval.main, capsys, *argv, '--json', tmp_path / 'one.json')
    assert status == 1 and 'ERRORS: 1 / 4' in one and 'SEGMENT-BASED F1: ' in one
    context = mp.start_processes(eval_rank, args=(2, free_port(), argv, tmp_path), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail('the 2-process evaluation did not finish within 120 s')
    assert comparable((tmp_path / 'rank0.out').read_text()) == comparable(one)
    shares = [json.loads((tmp_path / f'rank{r}.paths').read_text()) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 2] and shares[1][-1].endswith('zz_corrupt.wav')
    reports = [json.loads(p.read_text()) for p in (tmp_path / 'one.json', tmp_path / 'rank0.json')]
    for key in ('scores', 'sweep', 'files'):  # batches differ, so probabilities may in the last bits
        assert rounded(reports[0][key]) == rounded(reports[1][key]), key
    assert (tmp_path / 'rank0.exit').read_text() == '1' and (tmp_path / 'rank1.out').read_text() == ''
