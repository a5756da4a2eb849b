"""model/inference.py: ranking, AP, pooling, resizing, batching across files, model loading."""
import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from model.audio import split_bounds
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.inference import (SpectrogramFiles, average_precision, load_model, predict, predict_file,
                             predict_stream, prediction_pooling, prepare_windows, rank_predictions,
                             resolve_device, spec_settings, timeline, true_rank, window_batches)
from model.net import AEDNet

CLASSES = ['a', 'b', 'c', 'd']


def tiny_net(seed, num_classes=4, im_dim=1):
    torch.manual_seed(seed)
    return AEDNet(num_classes, (64, 64), im_dim, 2).eval()


def test_rank_predictions_sorts_filters_and_cuts():
    scores = [0.1, 0.5, 0.05, 0.35]
    assert rank_predictions(scores, CLASSES) == [('b', 0.5), ('d', 0.35), ('a', 0.1), ('c', 0.05)]
    assert rank_predictions(scores, CLASSES, threshold=0.1) == [('b', 0.5), ('d', 0.35), ('a', 0.1)]
    assert rank_predictions(scores, CLASSES, threshold=0.0, top_k=2) == [('b', 0.5), ('d', 0.35)]


def test_average_precision_is_reciprocal_rank():
    ranked = rank_predictions([0.1, 0.5, 0.05, 0.35], CLASSES)
    assert average_precision(ranked, 'b') == 1.0
    assert average_precision(ranked, 'a') == pytest.approx(1 / 3)
    assert true_rank(ranked, 'c') == 4


def test_average_precision_is_zero_outside_top_k():
    # defect 7: the original kept the previous file's AP when the label was not listed
    ranked = rank_predictions([0.1, 0.5, 0.05, 0.35], CLASSES, top_k=2)
    assert true_rank(ranked, 'a') is None
    assert average_precision(ranked, 'a') == 0.0
    below_threshold = rank_predictions([0.1, 0.5, 0.05, 0.35], CLASSES, threshold=0.2)
    assert average_precision(below_threshold, 'c') == 0.0
    assert average_precision([], 'a') == 0.0


def test_prediction_pooling_averages_windows():
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    np.testing.assert_allclose(prediction_pooling(p), [0.3, 0.7])
    np.testing.assert_array_equal(prediction_pooling(np.array([0.3, 0.7])), [0.3, 0.7])


def test_prepare_windows_matches_cv2_resize():
    rng = np.random.default_rng(0)
    specs = rng.random((3, 256, 512), dtype=np.float32)
    x = prepare_windows(specs, (128, 64))
    assert x.shape == (3, 1, 64, 128) and x.dtype == torch.float32
    for i in range(3):
        expected = cv2.resize(specs[i], (128, 64), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(x[i, 0].numpy(), expected, atol=1e-5)
    same = prepare_windows(specs, (512, 256))
    np.testing.assert_array_equal(same[:, 0].numpy(), specs)


def test_spec_settings_precedence_and_validation():
    model_spec = {'length': 5, 'overlap': 4, 'sample_rate': 22050, 'resample': 'sinc'}
    assert spec_settings(model_spec) == model_spec
    got = spec_settings(model_spec, length=3, overlap=2)
    assert got == {'length': 3, 'overlap': 2, 'sample_rate': 22050, 'resample': 'sinc'}
    fallback = {'length': 2, 'overlap': 1, 'sample_rate': 44100, 'resample': 'linear'}
    assert spec_settings({}, fallback=fallback) == fallback
    with pytest.raises(ValueError, match='overlap'):
        spec_settings(model_spec, length=3, overlap=3)
    with pytest.raises(ValueError, match='length'):
        spec_settings({}, length=4)


def test_predict_uses_the_network_it_is_given():
    # defect 9: the original's predict() read a global network
    x = torch.rand(5, 1, 64, 64)
    cpu = torch.device('cpu')
    p1 = predict(tiny_net(1), x, cpu)
    p2 = predict(tiny_net(2), x, cpu)
    assert p1.shape == (5, 4)
    np.testing.assert_allclose(p1.sum(axis=1), 1, atol=1e-5)
    assert not np.allclose(p1, p2)


def test_predict_multi_label_and_colour_models():
    x = torch.rand(3, 1, 64, 64)
    cpu = torch.device('cpu')
    sig = predict(tiny_net(1), x, cpu, multi_label=True)
    assert ((sig > 0) & (sig < 1)).all() and not np.allclose(sig.sum(axis=1), 1)
    colour = predict(tiny_net(1, im_dim=3), x, cpu, im_dim=3, batch_size=2)
    assert colour.shape == (3, 4)


class RecordingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.net(x)


def test_predict_stream_fills_batches_across_files_in_order():
    net = tiny_net(3)
    model = type('M', (), {'net': RecordingNet(net), 'device': torch.device('cpu'),
                           'multi_label': False, 'im_dim': 1})()
    xs = [torch.rand(n, 1, 64, 64) for n in (3, 1, 5, 2)]
    items = [{'index': i, 'x': x, 'error': None} for i, x in enumerate(xs)]
    items.insert(2, {'index': 99, 'x': None, 'error': 'broken'})
    out = list(predict_stream(model, iter(items), batch_size=4))
    assert [o['index'] for o in out] == [0, 1, 99, 2, 3]
    assert model.net.batches == [4, 4, 3]  # 11 windows from 4 files, not one batch per file
    assert out[2]['probs'] is None and 'x' not in out[0]
    for o, x in zip([o for o in out if o['index'] != 99], xs):
        np.testing.assert_allclose(o['probs'], predict(net, x, torch.device('cpu')), atol=1e-5)


def test_load_model_restores_weights_and_metadata(tmp_path):
    net = tiny_net(4, num_classes=3)
    meta = {'classes': ['x', 'y', 'z'], 'im_size': (64, 64), 'im_dim': 1, 'filters': 2,
            'multi_label': True, 'spec': {'length': 5, 'overlap': 4}}
    save_checkpoint(tmp_path / 'm.pt', net, meta)
    model = load_model('m.pt', tmp_path, 'cpu')  # bare name, looked up in the model folder
    assert model.classes == ['x', 'y', 'z'] and model.im_size == (64, 64) and model.multi_label
    assert model.spec == {'length': 5, 'overlap': 4} and not model.net.training
    saved = load_checkpoint(tmp_path / 'm.pt')['state_dict']
    for key, value in model.net.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_load_model_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_model('nothere.pt', tmp_path, 'cpu')
    (tmp_path / 'text.pt').write_text('not a checkpoint')
    with pytest.raises(CheckpointError):
        load_model(tmp_path / 'text.pt', tmp_path, 'cpu')
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not an AED checkpoint'):
        load_model(tmp_path / 'other.pt', tmp_path, 'cpu')


def test_resolve_device():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type in ('cpu', 'cuda', 'mps')
    with pytest.raises(ValueError):
        resolve_device('toaster')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            resolve_device('cuda')


def test_predict_file_and_timeline(tmp_path):
    rate = 22050  # resampled to 44100 first
    t = np.arange(int(6.5 * rate)) / rate
    sf.write(tmp_path / 'tone.wav', 0.3 * np.sin(2 * np.pi * 880 * t), rate)
    net = tiny_net(5)
    model = type('M', (), {'net': net, 'device': torch.device('cpu'), 'multi_label': False,
                           'im_dim': 1, 'im_size': (64, 64)})()
    settings = spec_settings({})
    result = predict_file(model, tmp_path / 'tone.wav', settings, batch_size=4)
    bounds = split_bounds(int(6.5 * rate) * 2, 44100, 3, 2)
    assert result.source_rate == rate and result.bounds == bounds
    assert result.probs.shape == (len(bounds), 4)
    rows = timeline(result.probs, result.bounds, result.rate, CLASSES)
    assert [(a, b) for a, b, _, _ in rows] == [(a / 44100, b / 44100) for a, b in bounds]
    assert all(label in CLASSES and 0 < conf <= 1 for _, _, label, conf in rows)


def test_spectrogram_files_reports_bad_files_without_raising(tmp_path):
    (tmp_path / 'bad.wav').write_bytes(b'RIFF garbage')
    sf.write(tmp_path / 'good.wav', np.zeros(44100 * 2, dtype=np.float32), 44100)  # silence
    data = SpectrogramFiles([tmp_path / 'bad.wav', tmp_path / 'good.wav'], spec_settings({}), (64, 64))
    bad, good = data[0], data[1]
    assert bad['x'] is None and 'readable' in bad['error']
    assert good['error'] is None and good['x'].shape == (2, 1, 64, 64) and good['constant'] == [0, 1]


def test_window_batches_torch_path_matches_numpy():
    # the torch FFT path is what CUDA runs; on the CPU it must give the same windows
    rng = np.random.default_rng(0)
    sig = rng.standard_normal(44100 * 7).astype(np.float32)
    bounds = split_bounds(len(sig), 44100, 3, 2)
    settings = spec_settings({})
    numpy_path = list(window_batches(sig, bounds, settings, (128, 64), 4))
    torch_path = list(window_batches(sig, bounds, settings, (128, 64), 4, device=torch.device('cpu')))
    assert [len(x) for x, _ in numpy_path] == [4, 3]
    for (a, _), (b, _) in zip(numpy_path, torch_path):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
