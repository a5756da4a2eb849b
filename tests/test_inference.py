"""model/inference.py: ranking, AP, pooling, resizing, batching across files, model loading."""
import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from model.audio import file_spectrograms, spec_defaults
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.inference import (batch_rows, predict, predict_files, predict_stream, prediction_pooling,
                             prepare_windows, rank_predictions)
from model.net import AEDNet
from model.session import LoadedModel, compile_model, load_model, spec_settings
from model.stream import BLOCK_SAMPLES, SignalBlocks

CLASSES = ['a', 'b', 'c', 'd']
SPEC = spec_defaults(3, 2, 44100, 'linear')  # the original's settings


def tiny_net(seed, num_classes=4, im_dim=1):
    torch.manual_seed(seed)
    return AEDNet(num_classes, (64, 64), im_dim, 2).eval()


def test_rank_predictions_sorts_filters_and_cuts():
    scores = [0.1, 0.5, 0.05, 0.35]
    assert rank_predictions(scores, CLASSES) == [('b', 0.5), ('d', 0.35), ('a', 0.1), ('c', 0.05)]
    assert rank_predictions(scores, CLASSES, threshold=0.1) == [('b', 0.5), ('d', 0.35), ('a', 0.1)]
    assert rank_predictions(scores, CLASSES, threshold=0.0, top_k=2) == [('b', 0.5), ('d', 0.35)]


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
    assert spec_settings(model_spec, SPEC) == model_spec
    got = spec_settings(model_spec, SPEC, length=3, overlap=2)
    assert got == {'length': 3, 'overlap': 2, 'sample_rate': 22050, 'resample': 'sinc'}
    fallback = {'length': 2, 'overlap': 1, 'sample_rate': 44100, 'resample': 'linear'}
    assert spec_settings({}, fallback) == fallback
    assert spec_settings({'length': 5, 'extra': 1}, fallback) == {**fallback, 'length': 5}
    with pytest.raises(ValueError, match='overlap'):
        spec_settings(model_spec, SPEC, length=3, overlap=3)
    with pytest.raises(ValueError, match='length'):
        spec_settings({}, SPEC, length=4)


def test_predict_uses_the_network_it_is_given(monkeypatch):
    # defect 9: the original's predict() read a global network. Every output
    # must be exactly what the network passed in gives, whatever globals exist.
    import model.inference as inference
    a, b = tiny_net(1), tiny_net(2)
    monkeypatch.setattr(inference, 'net', b, raising=False)  # a global a buggy predict could read
    x = torch.rand(5, 1, 64, 64)
    cpu = torch.device('cpu')
    with torch.no_grad():
        expect_a, expect_b = torch.softmax(a(x), 1).numpy(), torch.softmax(b(x), 1).numpy()
    assert not np.allclose(expect_a, expect_b, atol=1e-3)
    np.testing.assert_allclose(predict(a, x, cpu), expect_a, atol=1e-6)
    np.testing.assert_allclose(predict(b, x, cpu), expect_b, atol=1e-6)


def test_predict_multi_label_and_colour_models():
    x = torch.rand(3, 1, 64, 64)
    cpu = torch.device('cpu')
    sig = predict(tiny_net(1), x, cpu, multi_label=True)
    assert ((sig > 0) & (sig < 1)).all() and not np.allclose(sig.sum(axis=1), 1)
    colour = predict(tiny_net(1, im_dim=3), x, cpu, im_dim=3, batch_size=2)
    assert colour.shape == (3, 4)


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
    save_checkpoint(tmp_path / 'lies.pt', tiny_net(4), {'classes': CLASSES, 'im_size': (64, 64), 'im_dim': 1,
                                                       'filters': 4})  # the network has 2
    with pytest.raises(CheckpointError, match='lies.pt: weights do not match the architecture'):
        load_model('lies.pt', tmp_path, 'cpu')


def test_load_model_refuses_an_absent_device(tmp_path):
    save_checkpoint(tmp_path / 'm.pt', tiny_net(4), {'classes': CLASSES, 'im_size': (64, 64), 'im_dim': 1,
                                                    'filters': 2})
    assert load_model('m.pt', tmp_path, 'cpu').device == torch.device('cpu')
    assert load_model('m.pt', tmp_path, 'auto').device.type in ('cpu', 'cuda', 'mps')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA'):
            load_model('m.pt', tmp_path, 'cuda')


class RecordingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(len(x))
        return self.net(x)


def cpu_model(net, im_size=(64, 64)):
    return LoadedModel(net=net, classes=CLASSES, im_size=im_size, im_dim=1, multi_label=False, spec={},
                       device=torch.device('cpu'))


def tone(path, seconds, rate=44100, freq=880, amp=0.3):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, amp * np.sin(2 * np.pi * freq * t), rate)


def reference_probs(net, path, settings, im_size=(64, 64)):
    """The simple path: numpy spectrograms of the whole file -> prepare_windows -> net."""
    specs, _, bounds, _ = file_spectrograms(path, settings['length'], settings['overlap'],
                                            settings['sample_rate'], settings['resample'])
    with torch.no_grad():
        return torch.softmax(net(prepare_windows(specs, im_size)), 1).numpy(), bounds


def test_predict_files_fills_batches_across_files_and_blocks_in_order(tmp_path):
    net = tiny_net(3)
    model = cpu_model(RecordingNet(net))
    paths = []
    for i, seconds in enumerate((5, 2.5, 9, 3)):
        paths.append(tmp_path / f'{i}.wav')
        tone(paths[-1], seconds, rate=22050, freq=300 + 500 * i)  # resampled to 44100 on the way
    (tmp_path / 'bad.wav').write_bytes(b'RIFF garbage')
    paths.insert(2, tmp_path / 'bad.wav')
    settings = SPEC
    blocks = SignalBlocks(paths, settings, block_samples=44100 * 2)
    out = list(predict_stream(model, iter(blocks), settings, batch_size=4))
    assert [o['path'] for o in out] == paths
    assert out[2]['probs'] is None and 'readable' in out[2]['error']
    # 5 + 2 + 9 + 3 = 19 windows from 4 files, in blocks of 2 windows: full batches of 4
    assert [len(o['probs']) for o in out if o['probs'] is not None] == [5, 2, 9, 3]
    assert model.net.batches == [4, 4, 4, 4, 3]
    for o, path in zip([o for o in out if o['error'] is None], [p for p in paths if p.name != 'bad.wav']):
        expected, bounds = reference_probs(net, path, settings)
        assert o['bounds'] == bounds and o['source_rate'] == 22050 and o['constant'] == []
        np.testing.assert_allclose(o['probs'], expected, atol=1e-5)


def test_decode_errors_in_workers_are_results_not_a_stopped_run(tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f'{i}.wav')
        tone(paths[-1], 2 + i, freq=400 + 300 * i)
    paths[1].write_bytes(b'RIFF\x00\x00\x00\x00WAVEbroken')
    (tmp_path / 'empty.wav').write_bytes(b'')
    sf.write(tmp_path / 'no_samples.wav', np.zeros(0), 44100)  # a header and nothing else
    paths += [tmp_path / 'empty.wav', tmp_path / 'no_samples.wav']
    model = cpu_model(tiny_net(4))
    out = list(predict_files(model, paths, SPEC, batch_size=3, workers=2))
    assert [o['path'] for o in out] == paths
    assert [o['error'] is not None for o in out] == [False, True, False, False, False, True, True]
    assert 'empty' in out[5]['error'] and 'no audio samples' in out[6]['error']
    assert [len(o['probs']) for o in out if o['error'] is None] == [2, 4, 5, 6]


@pytest.mark.parametrize('workers', [0, 1])
@pytest.mark.parametrize('error', [TypeError, ValueError])
def test_a_bug_is_not_reported_as_a_bad_file(tmp_path, monkeypatch, workers, error):
    # issue 16.2.3: only decoding marks a bad file; a bug is a traceback, with workers or
    # without, even one raising what a bad file can raise (ValueError, from numpy say)
    import model.inference as inference
    tone(tmp_path / 'a.wav', 3)
    model = cpu_model(tiny_net(5))

    def broken(*args, **kwargs):
        raise error('a bug in the spectrogram code')
    monkeypatch.setattr(inference, 'spectrograms', broken)  # in a loader worker too (forked: patched)
    with pytest.raises(error, match='a bug'):
        list(predict_files(model, [tmp_path / 'a.wav'], SPEC, workers=workers))


def test_a_bug_in_the_block_cutting_is_not_a_bad_file(tmp_path, monkeypatch):
    import model.stream as stream
    tone(tmp_path / 'a.wav', 3)

    def broken(*args, **kwargs):
        raise ValueError('a bug in the block cutting')
    monkeypatch.setattr(stream, 'split_bounds', broken)
    with pytest.raises(ValueError, match='a bug'):
        list(predict_files(cpu_model(tiny_net(5)), [tmp_path / 'a.wav'], SPEC, workers=1))


def test_the_padded_last_batch_gives_the_unpadded_results(tmp_path):
    # issue 16.2.6: on CUDA a short batch is padded to a power of two, not to the full batch;
    # forced here on the CPU: 5 + 2 + 9 windows in batches of 8 run as 8, 8 and 1 -> 8, 8, 1
    assert [batch_rows(n, 256, True) for n in (1, 3, 4, 5, 200, 256)] == [1, 4, 4, 8, 256, 256]
    assert [batch_rows(n, 32, True) for n in (20, 31)] == [32, 32] and batch_rows(3, 256, False) == 3
    paths = []
    for i, seconds in enumerate((5, 2.5, 12)):
        paths.append(tmp_path / f'{i}.wav')
        tone(paths[-1], seconds, freq=300 + 500 * i)
    net, settings, out = tiny_net(9), SPEC, {}
    for pad in (False, True):
        model = cpu_model(RecordingNet(net))
        blocks = SignalBlocks(paths, settings)
        out[pad] = list(predict_stream(model, iter(blocks), settings, batch_size=8, pad=pad))
        out[pad, 'batches'] = model.net.batches
    assert out[False, 'batches'] == [8, 8, 3] and out[True, 'batches'] == [8, 8, 4]
    for a, b in zip(out[False], out[True]):
        assert a['probs'].shape == b['probs'].shape and a['bounds'] == b['bounds']
        np.testing.assert_allclose(a['probs'], b['probs'], atol=1e-6)


def test_short_silent_and_hours_long_files_stream_through(tmp_path, monkeypatch):
    import model.inference as inference
    tone(tmp_path / 'short.wav', 0.2)
    sf.write(tmp_path / 'silent.wav', np.zeros(44100 * 4, dtype=np.int16), 44100)
    # two hours of 8 kHz audio as a sparse file: a header, then zeros the OS never stores
    rate, seconds = 8000, 2 * 3600
    with sf.SoundFile(tmp_path / 'long.wav', 'w', rate, 1, 'PCM_16') as f:
        f.write(np.full(rate, 100, dtype=np.int16))
    with open(tmp_path / 'long.wav', 'r+b') as f:
        f.truncate(44 + 2 * rate * seconds)
    with open(tmp_path / 'long.wav', 'r+b') as f:  # RIFF and data sizes for the full length
        f.seek(4), f.write((36 + 2 * rate * seconds).to_bytes(4, 'little'))
        f.seek(40), f.write((2 * rate * seconds).to_bytes(4, 'little'))
    assert sf.info(tmp_path / 'long.wav').duration == seconds
    largest = []
    real_cut = inference.cut_windows

    def cut(sig, bounds, *args):
        largest.append(len(sig))
        return real_cut(sig, bounds, *args)
    monkeypatch.setattr(inference, 'cut_windows', cut)
    model = cpu_model(RecordingNet(tiny_net(6)))
    settings = spec_defaults(30, 0, rate, 'linear')
    out = list(predict_files(model, [tmp_path / n for n in ('short.wav', 'silent.wav', 'long.wav')],
                             settings, batch_size=8, workers=0))
    assert [o['error'] for o in out] == [None, None, None]
    assert len(out[0]['probs']) == 1 and out[1]['constant'] == [0]
    assert len(out[2]['probs']) == seconds // 30 and out[2]['constant'] == list(range(1, seconds // 30))
    # the long file came in blocks of bounded size, never whole
    assert max(largest) <= BLOCK_SAMPLES + 30 * rate and len(largest) > 10
    assert max(model.net.batches) == 8


def test_compile_runs_now_on_the_first_batch_shape_and_falls_back(monkeypatch):
    net = tiny_net(7)
    x = torch.rand(3, 1, 64, 64)
    expected = predict(net, x, torch.device('cpu'))
    shapes = []

    def fake_compile(plain):  # records the shapes it is called with, as a compiled network would
        def compiled(xb):
            shapes.append(tuple(xb.shape))
            return plain(xb)
        return compiled
    monkeypatch.setattr(torch, 'compile', fake_compile)
    model = cpu_model(net)
    assert compile_model(model, 5) is None and shapes == [(5, 1, 64, 64)]  # compiled before any file
    np.testing.assert_allclose(predict(model.net, x, torch.device('cpu')), expected, atol=1e-6)

    def failing_compile(plain):  # compiles lazily, then fails at the first call, as inductor can
        def compiled(xb):
            raise RuntimeError('backend compiler failed: no C++ compiler')
        return compiled
    monkeypatch.setattr(torch, 'compile', failing_compile)
    model = cpu_model(net)
    warning = compile_model(model, 4)
    assert 'torch.compile failed (backend compiler failed' in warning and model.net is net


def test_a_file_failing_after_some_blocks_is_one_error(tmp_path, monkeypatch):
    import model.stream as stream
    for name, seconds in (('a', 4), ('b', 12), ('c', 5)):
        tone(tmp_path / f'{name}.wav', seconds, rate=22050)
    real = stream.read_mono

    def read_mono(f, frames=-1):  # 'b' breaks in its third block, as a damaged file can
        if f.name.endswith('b.wav') and f.tell() > 22050 * 8:
            raise sf.LibsndfileError(0, 'truncated data chunk')
        return real(f, frames)
    monkeypatch.setattr(stream, 'read_mono', read_mono)
    model = cpu_model(tiny_net(8))
    settings = SPEC
    blocks = SignalBlocks([tmp_path / f'{n}.wav' for n in 'abc'], settings, block_samples=44100 * 3)
    out = list(predict_stream(model, iter(blocks), settings, batch_size=4))
    assert [o['error'] is None for o in out] == [True, False, True]
    assert 'truncated' in out[1]['error'] and out[1]['probs'] is None
    for o in (out[0], out[2]):
        np.testing.assert_allclose(o['probs'], reference_probs(model.net, o['path'], settings)[0], atol=1e-5)
