"""The CPU thread rule (model/threads.py) and its use by AED_test and AED_eval."""
import torch

import AED_eval
import AED_test
from model.net import AEDNet
from model.threads import SMALL_MODEL_MACS, decoding_workers, forward_macs, pick_threads


def test_forward_macs_counts_the_networks_convolutions_and_dense_layers():
    # the count grows with the square of the filters (conv k*k*c_in*c_out) and with the image area
    small, wide = forward_macs((128, 64), 16), forward_macs((128, 64), 32)
    assert 3.5 < wide / small < 4.0
    assert 3.9 < forward_macs((256, 128), 16) / small < 4.1
    # cross-check against the layer shapes: every conv weight times its output positions
    net, macs, x = AEDNet(10, (128, 64), 1, 16), 0, torch.zeros(1, 1, 64, 128)
    for layer in net.features:
        y = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            macs += layer.weight.numel() * y.shape[2] * y.shape[3]
        x = y
    dense = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert forward_macs((128, 64), 16) == macs + dense


def test_small_models_get_one_thread_large_ones_the_free_cores():
    assert forward_macs((128, 64), 16) < SMALL_MODEL_MACS < forward_macs((512, 256), 64)
    assert pick_threads(0, (128, 64), 16, cores=16) == 1  # the demo preset
    assert pick_threads(0, (256, 128), 32, cores=16) == 1  # measured faster on one thread too
    assert pick_threads(0, (512, 256), 64, cores=16) == 16
    assert pick_threads(0, (512, 256), 64, cores=0) == 1  # never below 1
    assert pick_threads(0, (512, 256), 64, cores=32, cap=16) == 16  # never above torch's default


def test_pick_threads_honours_the_flag_and_omp_num_threads():
    assert pick_threads(3, (128, 64), 16, cores=2) == 3  # --threads 3
    assert pick_threads(0, (512, 256), 64, cores=8, omp_env='2') is None  # the user's OMP_NUM_THREADS
    assert pick_threads(0, (128, 64), 16, cores=8, omp_env='') == 1


def test_decoding_workers():
    assert decoding_workers(0, files=1, on_cpu=True, cores=16) == 0  # one file on a CPU: decoded in place
    assert decoding_workers(0, files=1, on_cpu=False, cores=16) == 1
    assert decoding_workers(0, files=40, on_cpu=True, cores=2) == 1  # cores - 1, at least 1
    assert decoding_workers(0, files=40, on_cpu=True, cores=64) == 8  # at most 8
    assert decoding_workers(3, files=40, on_cpu=True, cores=2) == 3  # --workers 3
    assert decoding_workers(3, files=2, on_cpu=True, cores=2) == 2  # never more than files


def test_scripts_set_the_threads(capsys, monkeypatch, tiny_model, demo_data, tmp_path):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        AED_test.main(['--filenames', str(demo_data / 'examples' / 'siren_example.wav'),
                       '--modelname', str(tiny_model), '--device', 'cpu'])
        assert torch.get_num_threads() == 1  # a 4-filter 128x64 model
        torch.set_num_threads(1)
        summary = AED_eval.main(['--testdir', str(demo_data / 'test'), '--modelname', str(tiny_model),
                                 '--device', 'cpu', '--threads', '2', '--confmatrix', '', '--quiet'])
        assert torch.get_num_threads() == 2 and summary['settings']['threads'] == 2
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
