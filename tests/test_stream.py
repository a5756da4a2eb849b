"""Inference front end: the vectorised torch spectrogram, block decoding, the CUDA paths."""
import numpy as np
import pytest
import soundfile as sf
import torch

from model import audio
from model.inference import cut_windows, predict, predict_files, prepare_windows
from model.net import AEDNet
from model.session import LoadedModel
from model.stream import file_blocks

SPEC = audio.spec_defaults(3, 2, 44100, 'linear')  # the original's settings
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def events(n, rate, seed):
    """Noise with tone bursts and a silent stretch, so images have structure and ties are rare."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    sig = 0.02 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 1500 * t) * (np.sin(t * 3) > 0.5)
    sig[: rate // 3] = 0
    return sig.astype(np.float32)


@pytest.mark.parametrize('seconds', sorted(audio.SPEC_SETTINGS))
def test_torch_spectrogram_equals_the_numpy_grey_levels(seconds):
    # what AED_spec writes (uint8) against the vectorised torch path, every length and
    # several overlaps, with a short last window, a signal shorter than a window and one exact
    cases = [(overlap, int(44100 * seconds * 1.7) + 77) for overlap in (0, 1, seconds / 2, seconds - 1)]
    for k, (overlap, n) in enumerate(cases + [(1, int(44100 * 1.6)), (0, 44100 * seconds)]):
        sig = events(n, 44100, seed=k)
        bounds = audio.split_bounds(n, 44100, seconds, overlap)
        grey, constant = audio.spectrograms(sig, bounds, 44100, seconds, uint8=True)
        images, constant_torch = audio.spectrograms(torch.from_numpy(sig), bounds, 44100, seconds)
        assert images.shape == (len(bounds), 256, 512) and constant_torch == constant
        diff = np.abs(np.rint(images.numpy() * 255).astype(int) - grey)
        assert diff.max() <= 1, (overlap, n)
        assert (diff > 0).mean() < 0.01


def test_torch_spectrogram_of_silence_and_at_other_rates():
    sig = np.zeros(44100 * 4, dtype=np.float32)
    sig[44100 * 3:] = events(44100, 44100, 3)
    bounds = audio.split_bounds(len(sig), 44100, 2, 1)
    images, constant = audio.spectrograms(torch.from_numpy(sig), bounds, 44100, 2)
    assert constant == [0, 1] and not images[:2].any() and float(images[2:].amax()) == pytest.approx(1)
    sig = events(44100 * 20, 44100, 8)
    sig[44100 * 10:44100 * 14] = 0  # windows 10, 11 and 12 are silent (past the first batch of 8)
    bounds = audio.split_bounds(len(sig), 44100, 2, 1)
    images, constant = audio.spectrograms(torch.from_numpy(sig), bounds, 44100, 2)
    assert constant == audio.spectrograms(sig, bounds, 44100, 2)[1] == [10, 11, 12]
    assert not images[10:13].any() and images[13].any()
    sig = events(22050 * 7, 22050, 4)
    bounds = audio.split_bounds(len(sig), 22050, 5, 4)
    grey, _ = audio.spectrograms(sig, bounds, 22050, 5, uint8=True)
    images, _ = audio.spectrograms(torch.from_numpy(sig), bounds, 22050, 5)
    assert np.abs(np.rint(images.numpy() * 255) - grey).max() <= 1


def test_torch_spectrogram_of_a_slice_reads_the_slices_samples():
    # defect 16.4: as_strided ignored the storage offset of a sliced tensor
    full = torch.from_numpy(events(44100 * 10, 44100, 9))
    part = full[44100:]  # 9 s: three whole 3 s windows, read with no padding
    for overlap in (0, 2):
        bounds = audio.split_bounds(len(part), 44100, 3, overlap)
        from_slice, _ = audio.spectrograms(part, bounds)
        assert torch.equal(from_slice, audio.spectrograms(part.clone(), bounds)[0])
    every_other = torch.from_numpy(events(44100 * 12, 44100, 10))[::2]  # a strided view, too
    bounds = audio.split_bounds(len(every_other), 44100, 3, 2)
    assert torch.equal(audio.spectrograms(every_other, bounds)[0],
                       audio.spectrograms(every_other.contiguous(), bounds)[0])


def test_gpu_chunks_of_windows_give_the_numpy_windows(monkeypatch):
    # GPU_SPEC_WINDOWS chunking, run on the CPU with the torch path forced: a block of
    # 25 windows in chunks of 4 gives the windows of the numpy path, silent ones included
    import model.inference as inference
    monkeypatch.setattr(inference, 'GPU_SPEC_WINDOWS', 4)
    sig = events(44100 * 25, 44100, 11)
    sig[44100 * 9:44100 * 14] = 0  # windows 9 to 11 are silent: across the third and fourth chunks
    bounds = audio.split_bounds(len(sig), 44100, 3, 2)
    settings, cpu = SPEC, torch.device('cpu')
    x, silent = cut_windows(torch.from_numpy(sig), bounds, settings, (128, 64), cpu, on_torch=True)
    expected, expected_silent = cut_windows(torch.from_numpy(sig), bounds, settings, (128, 64), cpu)
    assert len(bounds) == 25 and x.shape == expected.shape == (25, 1, 64, 128)
    assert silent == expected_silent == [9, 10, 11]
    assert (x - expected).abs().max() < 2e-3


@pytest.mark.parametrize('rate,subtype,channels,peak', [
    (22050, 'PCM_16', 1, 40 / 32768), (48000, 'PCM_16', 2, 0.5), (8000, 'PCM_24', 1, 0.01),
    (44100, 'PCM_16', 1, 0.3), (44100, 'PCM_16', 2, 0.3), (32000, 'FLOAT', 2, 0.2)])
def test_blocks_are_the_samples_of_the_whole_file(tmp_path, rate, subtype, channels, peak):
    # resampling block by block, rounding to the integer grid included, gives the
    # same samples as load_audio + resample of the whole file; 16-bit stereo at the
    # analysis rate averages to half-LSB values, which int16 blocks would round away
    path = tmp_path / 'a.wav'
    rng = np.random.default_rng(rate)
    sf.write(path, np.clip(peak * rng.standard_normal((int(rate * 19.7), channels)), -1, 1), rate,
             subtype=subtype)
    settings = SPEC
    sig, source_rate, scale = audio.load_audio(path)
    whole = audio.resample(sig, source_rate, 44100, 'linear', scale)
    bounds = audio.split_bounds(len(whole), 44100, 3, 2)
    got = []
    for block in file_blocks(path, settings, block_samples=44100 * 4):
        assert block['first'] == len(got) and block['source_rate'] == rate and len(block['sig']) <= 44100 * 7
        assert block['windows'] == len(bounds)
        offset = block['offset']
        got += [(offset + a, offset + b, block['sig'][a:b]) for a, b in block['bounds']]
    assert block['last'] and [(a, b) for a, b, _ in got] == bounds
    for a, b, samples in got:  # int16 blocks hold k for the sample k / 32768
        np.testing.assert_array_equal(samples / np.float32(32768) if samples.dtype == np.int16 else samples,
                                      whole[a:b])
    if subtype == 'PCM_16' and (channels == 1 or rate != 44100):
        assert block['sig'].dtype == np.int16  # whole 16-bit values: half the bytes to the main process


def tiny_model(device, im_size=(128, 64)):
    torch.manual_seed(0)
    net = AEDNet(3, im_size, 1, 4).eval().to(device)
    if device.type == 'cuda':
        net = net.to(memory_format=torch.channels_last)
    return LoadedModel(net=net, classes=['a', 'b', 'c'], im_size=im_size, im_dim=1, multi_label=False,
                       spec={}, device=device)


@cuda
def test_cuda_spectrogram_equals_the_cpu_one():
    sig = events(44100 * 12, 44100, 5)
    bounds = audio.split_bounds(len(sig), 44100, 3, 2)
    cpu, constant = audio.spectrograms(torch.from_numpy(sig), bounds)
    gpu, constant_gpu = audio.spectrograms(torch.from_numpy(sig).cuda(), bounds)
    assert gpu.is_cuda and constant_gpu == constant
    assert (gpu.cpu() - cpu).abs().max() < 2e-3


@cuda
def test_cuda_inference_in_fp16_and_channels_last_matches_the_cpu(tmp_path):
    model = tiny_model(torch.device('cuda'))
    assert model.net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(9, 1, 64, 128)
    gpu = predict(model.net, x, model.device, batch_size=4)  # fp16 autocast, channels_last
    cpu = predict(tiny_model(torch.device('cpu')).net, x, torch.device('cpu'))
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)
    # the whole front end on the GPU gives the CPU's file probabilities
    sf.write(tmp_path / 'a.wav', events(44100 * 8, 44100, 6), 44100)
    settings = SPEC
    on_gpu = next(predict_files(model, [tmp_path / 'a.wav'], settings, batch_size=4))
    on_cpu = next(predict_files(tiny_model(torch.device('cpu')), [tmp_path / 'a.wav'], settings))
    np.testing.assert_allclose(on_gpu['probs'], on_cpu['probs'], atol=2e-2)


def test_prepare_windows_of_torch_images_resizes_like_numpy():
    sig = events(44100 * 6, 44100, 7)
    bounds = audio.split_bounds(len(sig), 44100, 3, 2)
    a = prepare_windows(audio.spectrograms(sig, bounds)[0], (128, 64))
    b = prepare_windows(audio.spectrograms(torch.from_numpy(sig), bounds)[0], (128, 64))
    assert a.shape == b.shape == (len(bounds), 1, 64, 128)
    assert (a - b).abs().max() < 2e-3
