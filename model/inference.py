"""Prediction with a trained checkpoint: shared by AED_test.py and AED_eval.py.

The model is loaded once per process (load_model) and every prediction
function takes the network as an argument (the original's AED_test used a
global one, defect 9). Loader workers decode files into signal blocks
(model.stream); predict_stream cuts each block into overlapping windows on
the model's device, exactly as AED_spec.py cuts files, resizes them to the
network's input, fills large batches across files and runs the network.
Window probabilities are averaged over a file (the original's pooling),
ranked, filtered by a confidence threshold and cut to the top k.

    model, settings = open_model('AED_Example_Run_model_best.pt', 'model/', 'auto')
    for result in predict_files(model, ['dog.wav', 'rain.flac'], settings, batch_size=32):
        rank_predictions(prediction_pooling(result['probs']), model.classes, 0.01, 5)
"""
import collections
import functools
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from model.audio import (SPEC_HEIGHT, SPEC_WIDTH, AudioError, check_spec_params,
                         spec_defaults, spectrograms)
from model.checkpoint import (CheckpointError, checkpoint_meta, model_from_checkpoint,
                              resolve_model_path)
from model.stream import SignalBlocks, as_float, block_loader, default_workers
from model.training import maybe_compile, select_device

# Spectrogram windows computed at once on a GPU (their frames and FFT take ~0.5 GB)
GPU_SPEC_WINDOWS = 256


# Used when neither the caller nor the checkpoint names a setting (the original's values)
DEFAULT_SPEC = spec_defaults(3, 2, 44100, 'linear')


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
        torch.backends.cudnn.benchmark = True  # autotune: inference batches have few shapes
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
    with channels_last tensors and float16 autocast: on an H100 fp16 inference
    measured 23 % faster than bf16, and softmax outputs need no bf16 range.
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
                    logits = net(xb).float()
            else:
                logits = net(xb)
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


def cut_windows(sig, bounds, settings, im_size, device):
    """Windows of one signal block as network input (n, 1, H, W) on device, and the silent ones.

    On a CPU numpy's DFT is the fastest; elsewhere the vectorised torch
    spectrogram runs on the device, GPU_SPEC_WINDOWS windows at a time.
    """
    rate, seconds = settings['sample_rate'], settings['length']
    if device.type == 'cpu':
        specs, constant = spectrograms(as_float(sig.numpy()), bounds, rate, seconds)
        return prepare_windows(specs, im_size), constant
    sig = as_float(sig.to(device, non_blocking=True))
    parts, constant = [], []
    for start in range(0, len(bounds), GPU_SPEC_WINDOWS):
        specs, silent = spectrograms(sig, bounds[start:start + GPU_SPEC_WINDOWS], rate, seconds)
        parts.append(prepare_windows(specs, im_size))
        constant += [start + i for i in silent]
    return torch.cat(parts) if len(parts) > 1 else parts[0], constant


def predict_stream(model, items, settings, batch_size=32):
    """Predict a stream of model.stream.SignalBlocks items; yield one result per file, in order.

    The windows of consecutive blocks and files share batches, so short clips
    still fill every batch and a long file never sits in memory at once. A
    result is a dict: index, path, error (None or the reason), probs
    (windows, classes) numpy or None, source_rate, bounds (samples at the
    analysis rate), constant (silent windows) and seconds (first block to
    last prediction).
    """
    files, done = {}, 0  # order -> the file's result so far; files yielded
    pending, queued = collections.deque(), 0  # [windows, file order] not yet predicted
    batch = None  # one input buffer for every batch: no heap fragmentation over hours of audio

    def run(n):
        nonlocal batch, queued
        if batch is None:
            batch = pending[0][0].new_empty((batch_size, *pending[0][0].shape[1:]))
        owners, filled = [], 0
        while filled < n:  # copy n windows off the front of pending
            x, order = pending[0]
            k = min(n - filled, len(x))
            batch[filled:filled + k] = x[:k]
            owners.append((order, k))
            if k == len(x):
                pending.popleft()
            else:
                pending[0] = (x[k:], order)
            filled += k
        queued -= n
        # on CUDA always the full batch shape (no new cudnn autotuning or compiled graph
        # for the last batch; rows are independent in eval mode)
        x = batch if model.device.type == 'cuda' else batch[:n]
        probs = predict(model.net, x, model.device, model.multi_label, model.im_dim, batch_size)
        row = 0
        for order, k in owners:
            if order in files:  # rows of a file that failed later are dropped
                files[order]['probs'].append(probs[row:row + k])
            row += k

    def ready():
        nonlocal done
        while done in files and files[done]['last'] and all(order != done for _, order in pending):
            result = files.pop(done)
            result['probs'] = np.concatenate(result['probs']) if result['error'] is None else None
            result['seconds'] = time.perf_counter() - result.pop('start')
            del result['last']
            done += 1
            yield result

    for item in items:
        result = files.setdefault(item['order'], {
            'index': item['index'], 'path': item['path'], 'error': None, 'probs': [], 'bounds': [],
            'constant': [], 'source_rate': None, 'last': False, 'start': time.perf_counter()})
        result['last'] = item['last']
        if item['error'] is not None:
            result['error'] = item['error']
        else:
            x, silent = item.get('x'), item.get('silent')
            if x is None:  # cut here, on the device
                x, silent = cut_windows(item['sig'], item['bounds'], settings, model.im_size, model.device)
            result['source_rate'] = item['source_rate']
            result['bounds'] += [(a + item['offset'], b + item['offset']) for a, b in item['bounds']]
            result['constant'] += [item['first'] + i for i in silent]
            pending.append((x, item['order']))
            queued += len(x)
        while queued >= batch_size:
            run(batch_size)
        yield from ready()
    if queued:
        run(queued)
    yield from ready()


def predict_files(model, paths, settings, batch_size=32, workers=0, indices=None):
    """predict_stream over files decoded by `workers` loader processes (0 = in this one).

    On a GPU the workers only decode and the main process cuts windows on the
    GPU; on a CPU the workers cut them too, in parallel with the network.
    """
    on_cpu = model.device.type == 'cpu' and workers > 0
    transform = functools.partial(cut_windows, settings=settings, im_size=model.im_size,
                                  device=model.device) if on_cpu else None
    blocks = SignalBlocks(paths, settings, indices, transform=transform)
    loader = block_loader(blocks, min(workers, len(blocks.paths)), model.device.type == 'cuda')
    return predict_stream(model, loader, settings, batch_size)


class _FirstCallFallback(torch.nn.Module):
    """A compiled network that falls back to the plain one if its first (lazy) compilation fails."""

    def __init__(self, compiled, plain):
        super().__init__()
        self.compiled, self.plain, self.tried = compiled, plain, False

    def forward(self, x):
        if self.tried:
            return self.compiled(x)
        self.tried = True
        try:
            return self.compiled(x)
        except RuntimeError as e:  # torch._dynamo's errors are RuntimeErrors
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f'WARNING: torch.compile failed at the first batch ({reason}); running uncompiled',
                  file=sys.stderr)
            self.compiled = self.plain
            return self.plain(x)


def compile_model(model, enabled):
    """Opt-in torch.compile of model.net; returns a warning for stderr, or None."""
    net, warning = maybe_compile(model.net, enabled)
    if net is not model.net:
        model.net = _FirstCallFallback(net, model.net)
    return warning


__all__ = ['AudioError', 'CheckpointError', 'DEFAULT_SPEC', 'LoadedModel', 'average_precision',
           'compile_model', 'cut_windows', 'default_workers', 'load_model', 'predict',
           'predict_files', 'predict_stream', 'prediction_pooling', 'prepare_windows',
           'rank_predictions', 'resolve_device', 'spec_defaults', 'spec_settings', 'timeline',
           'true_rank']
