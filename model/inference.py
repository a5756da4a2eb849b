"""Prediction with a trained checkpoint: shared by AED_test.py and AED_eval.py.

The model is loaded once per process (load_model) and every prediction
function takes the network as an argument (the original's AED_test used a
global one, defect 9). A file becomes overlapping windows exactly as in
AED_spec.py, each window a spectrogram resized to the network's input; window
probabilities are averaged over the file (the original's pooling), ranked,
filtered by a confidence threshold and cut to the top k.

    model = load_model('AED_Example_Run_model_best.pt', 'model/', 'auto')
    settings = spec_settings(model.spec, fallback={'length': 3, 'overlap': 2})
    result = predict_file(model, 'dog.wav', settings)
    rank_predictions(prediction_pooling(result.probs), model.classes, 0.01, 5)
"""
import collections
import os
from dataclasses import dataclass, field

import numpy as np
import soundfile  # noqa: F401  (imported up front so no file's timing includes it)
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from model.audio import (SPEC_HEIGHT, SPEC_WIDTH, AudioError, check_spec_params, read_chunked,
                         spectrograms)
from model.checkpoint import (CheckpointError, checkpoint_meta, model_from_checkpoint,
                              resolve_model_path)
from model.training import select_device

# Used when neither the caller nor the checkpoint names a setting (the original's values)
DEFAULT_SPEC = {'length': 3, 'overlap': 2, 'sample_rate': 44100, 'resample': 'linear'}


@dataclass
class LoadedModel:
    """A network in eval mode on its device, with what is needed to feed and read it."""
    net: torch.nn.Module
    classes: list
    im_size: tuple  # (width, height)
    im_dim: int
    multi_label: bool
    spec: dict  # the checkpoint's spectrogram settings (may be empty)
    device: torch.device
    path: str = ''
    meta: dict = field(default_factory=dict)  # how it was trained (checkpoint_meta)


@dataclass
class FileResult:
    """Window probabilities of one file, plus what the reports need."""
    probs: np.ndarray  # (windows, classes)
    source_rate: int
    bounds: list  # (start, stop) samples at the analysis rate
    rate: int  # the analysis rate of bounds
    constant: list = field(default_factory=list)  # silent windows


def resolve_device(name='auto'):
    """'auto' picks CUDA, then Apple MPS, then CPU; a bad or absent device is a ValueError."""
    try:
        return select_device(name or 'auto')
    except RuntimeError:  # torch.device's own message lists every backend
        raise ValueError(f"unknown device {name!r} (use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps')") from None


class _SkipWeightInit(TorchFunctionMode):
    """Make torch.nn.init calls no-ops while a network is built for loading.

    Every weight is overwritten by the checkpoint right after, and random
    initialisation of the 23 M parameters costs ~0.4 s of a CLI's start-up.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, '__module__', None) == 'torch.nn.init':
            return args[0] if args else kwargs.get('tensor')
        return func(*args, **kwargs)


def load_model(name, model_dir, device='auto'):
    """Resolve, read (weights_only) and rebuild a checkpoint's network on a device.

    `name` is a path, or a file name under model_dir. Raises CheckpointError
    (missing, unreadable or not a checkpoint) or ValueError (bad device).
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    path = resolve_model_path(name, model_dir)
    with _SkipWeightInit():
        net, ckpt = model_from_checkpoint(path, device)  # strict load: every weight is set
    if device.type == 'cuda':
        net = net.to(memory_format=torch.channels_last)
    w, h = (int(v) for v in ckpt['im_size'])
    return LoadedModel(net=net, classes=[str(c) for c in ckpt['classes']], im_size=(w, h),
                       im_dim=int(ckpt['im_dim']), multi_label=bool(ckpt.get('multi_label', False)),
                       spec=dict(ckpt.get('spec') or {}), device=device, path=str(path),
                       meta=checkpoint_meta(ckpt))


def spec_settings(model_spec, length=None, overlap=None, sample_rate=None, resample_method=None,
                  fallback=None):
    """Spectrogram settings: explicit values, else the checkpoint's, else fallback, else DEFAULT_SPEC.

    Returns {'length', 'overlap', 'sample_rate', 'resample'}; raises ValueError
    for a length/overlap pair that AED_spec cannot produce (defect 10).
    """
    merged = {**DEFAULT_SPEC, **(fallback or {}), **(model_spec or {})}
    given = {'length': length, 'overlap': overlap, 'sample_rate': sample_rate,
             'resample': resample_method}
    merged.update({k: v for k, v in given.items() if v is not None})
    # the checkpoint's spec may carry a float like 3.0 for a supported int length
    if float(merged['length']).is_integer():
        merged['length'] = int(merged['length'])
    check_spec_params(merged['length'], merged['overlap'])
    merged['sample_rate'] = int(merged['sample_rate'])
    return {k: merged[k] for k in DEFAULT_SPEC}


def open_model(name, model_dir, device, length=None, overlap=None, fallback=None):
    """load_model, then spec_settings for it: how AED_eval and AED_test start.

    Returns (LoadedModel, settings); raises CheckpointError or ValueError.
    """
    model = load_model(name, model_dir, device)
    return model, spec_settings(model.spec, length, overlap, fallback=fallback)


def prepare_windows(specs, im_size):
    """(n, 256, 512) spectrograms (numpy or tensor) -> float32 tensor (n, 1, H, W).

    Bilinear resize with half-pixel centres and no anti-aliasing, which is what
    cv2.resize(INTER_LINEAR) did to the training PNGs.
    """
    x = torch.from_numpy(specs) if isinstance(specs, np.ndarray) else specs
    x = x.float().unsqueeze(1)  # (n, 1, 256, 512)
    w, h = im_size
    if (h, w) != (SPEC_HEIGHT, SPEC_WIDTH):
        x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=False)
    return x


def predict(net, x, device, multi_label=False, im_dim=1, batch_size=32):
    """Class probabilities of windows x (n, 1, H, W) -> numpy float32 (n, classes).

    Softmax, or sigmoid for multi-label models. Runs in inference mode; on CUDA
    with channels_last tensors and float16 autocast.
    """
    cuda = device.type == 'cuda'
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            if im_dim != xb.shape[1]:
                xb = xb.expand(-1, im_dim, -1, -1)  # grey spectrogram -> colour model
            if cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast('cuda', dtype=torch.float16):
                    logits = net(xb)
            else:
                logits = net(xb)
            logits = logits.float()
            probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
            out.append(probs.cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def prediction_pooling(p):
    """Average the window predictions of a file (port of AED_test.predictionPooling)."""
    p = np.asarray(p)
    return p.mean(axis=0) if p.ndim == 2 else p


def rank_predictions(scores, classes, threshold=0.0, top_k=None):
    """[(label, confidence)] best first, confidences >= threshold, at most top_k (None = all)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind='stable')
    ranked = [(classes[i], float(scores[i])) for i in order if scores[i] >= threshold]
    return ranked if top_k is None else ranked[:max(0, int(top_k))]


def true_rank(ranked, label):
    """1-based position of label in a ranked list, or None when it is not there."""
    for i, (name, _) in enumerate(ranked):
        if name == label:
            return i + 1
    return None


def average_precision(ranked, label):
    """1 / rank of the true label, 0 when it is not in the list (defect 7)."""
    rank = true_rank(ranked, label)
    return 1.0 / rank if rank else 0.0


def timeline(probs, bounds, rate, classes):
    """Per window: (start s, end s, top label, confidence)."""
    top = np.asarray(probs).argmax(axis=1)
    return [(a / rate, b / rate, classes[k], float(probs[i, k]))
            for i, ((a, b), k) in enumerate(zip(bounds, top))]


def read_signal(path, settings):
    """Mono signal at the analysis rate, its source rate and its window bounds."""
    return read_chunked(path, settings['length'], settings['overlap'], settings['sample_rate'],
                        settings['resample'])


def window_batches(sig, bounds, settings, im_size, batch_size=32, device=None):
    """Spectrogram windows batch by batch, so a long recording never sits in memory at once.

    Yields (x (b, 1, H, W) float32 on device or CPU, indices of silent windows).
    """
    if device is not None:
        sig = torch.from_numpy(sig).to(device)  # FFT on the GPU as well
    for start in range(0, len(bounds), batch_size):
        specs, constant = spectrograms(sig, bounds[start:start + batch_size],
                                       settings['sample_rate'], settings['length'])
        yield prepare_windows(specs, im_size), [start + c for c in constant]


def predict_file(model, path, settings, batch_size=32):
    """Window probabilities of one audio file with a loaded model (raises AudioError)."""
    sig, source_rate, bounds = read_signal(path, settings)
    # on CUDA the spectrograms are computed there too; CPU FFTs stay in numpy (faster)
    spec_device = model.device if model.device.type == 'cuda' else None
    probs, constant = [], []
    for x, silent in window_batches(sig, bounds, settings, model.im_size, batch_size, spec_device):
        probs.append(predict(model.net, x, model.device, model.multi_label, model.im_dim, batch_size))
        constant += silent
    return FileResult(np.concatenate(probs), source_rate, bounds, settings['sample_rate'], constant)


class SpectrogramFiles(torch.utils.data.Dataset):
    """Files -> their prepared windows, for a DataLoader whose workers decode ahead.

    An item is a dict: index, path, x (n, 1, H, W) float32 tensor or None,
    source_rate, n (windows), constant (silent windows) and error (None or a
    one-line reason). Items never raise, so one bad file cannot stop a run.
    """

    def __init__(self, paths, settings, im_size, chunk=32):
        self.paths = list(paths)
        self.settings = dict(settings)
        self.im_size = tuple(im_size)
        self.chunk = chunk

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        item = {'index': index, 'path': path, 'x': None, 'source_rate': None, 'n': 0,
                'constant': [], 'error': None}
        try:
            sig, item['source_rate'], bounds = read_signal(path, self.settings)
            parts = []
            for x, silent in window_batches(sig, bounds, self.settings, self.im_size, self.chunk):
                parts.append(x)
                item['constant'] += silent
            item['x'] = torch.cat(parts) if len(parts) > 1 else parts[0]
            item['n'] = len(item['x'])
        except AudioError as e:
            item['error'] = str(e)
        except Exception as e:  # one bad file must never end a long evaluation
            item['error'] = f'{type(e).__name__}: {e}'
        return item


def _as_is(item):
    return item


def default_workers(cores=None):
    """Decoding workers that leave a core for the network: cores - 1, between 1 and 8."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return max(1, min(8, (cores or 1) - 1))


def file_loader(paths, settings, im_size, workers=1, pin_memory=False, chunk=32):
    """Items of SpectrogramFiles in file order, decoded by `workers` processes (0 = here)."""
    dataset = SpectrogramFiles(paths, settings, im_size, chunk)
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_as_is,
                                       pin_memory=pin_memory,
                                       prefetch_factor=4 if workers else None)


def predict_stream(model, items, batch_size=32):
    """Predict a stream of file items (dicts with 'x', as SpectrogramFiles gives).

    Windows of consecutive files share batches, so a folder of short clips
    still fills every batch. Yields each item, in input order, with 'probs'
    (n, classes) numpy added (None for items without windows) and 'x' dropped.
    """
    pending = collections.deque()  # [item, windows needed, parts, windows got]
    buffer = collections.deque()  # window tensors not yet predicted
    buffered = 0

    def run(n):
        nonlocal buffered
        parts, got = [], 0
        while got < n:  # take n windows off the front of the buffer
            x = buffer[0]
            k = min(n - got, len(x))
            parts.append(x[:k])
            if k == len(x):
                buffer.popleft()
            else:
                buffer[0] = x[k:]
            got += k
        buffered -= n
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        probs = predict(model.net, x, model.device, model.multi_label, model.im_dim, n)
        offset = 0
        for entry in pending:  # hand the rows back to the files they came from
            if offset == n:
                break
            take = min(entry[1] - entry[3], n - offset)
            if take > 0:
                entry[2].append(probs[offset:offset + take])
                entry[3] += take
                offset += take

    def finished():
        while pending and pending[0][3] == pending[0][1]:
            item, n, parts, _ = pending.popleft()
            item = {k: v for k, v in item.items() if k != 'x'}
            item['probs'] = np.concatenate(parts) if n else None
            yield item

    for item in items:
        x = item.get('x')
        n = 0 if x is None else len(x)
        pending.append([item, n, [], 0])
        if n:
            buffer.append(x)
            buffered += n
        while buffered >= batch_size:
            run(batch_size)
        yield from finished()
    while buffered:
        run(min(batch_size, buffered))
    yield from finished()


__all__ = ['AudioError', 'CheckpointError', 'DEFAULT_SPEC', 'FileResult', 'LoadedModel',
           'SpectrogramFiles', 'average_precision', 'default_workers', 'file_loader',
           'load_model', 'predict', 'predict_file', 'predict_stream', 'prediction_pooling',
           'prepare_windows', 'rank_predictions', 'read_signal', 'resolve_device',
           'spec_settings', 'timeline', 'true_rank', 'window_batches']
