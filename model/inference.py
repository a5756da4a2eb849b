"""Prediction for AED_test.py and AED_eval.py: signal blocks (model.stream) cut into windows on the
model's device, batched across files; each file's window probabilities come back in order."""
import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from model.audio import SPEC_HEIGHT, SPEC_WIDTH, spectrograms
from model.stream import BLOCK_SAMPLES, GPU_BLOCK_SAMPLES, SignalBlocks, block_loader

# Spectrogram windows computed at once on a GPU (their frames and FFT take ~0.5 GB)
GPU_SPEC_WINDOWS = 256


def prepare_windows(specs, im_size):
    """(n, 256, 512) spectrograms (numpy or tensor) -> float32 tensor (n, 1, H, W), resized as
    cv2.resize(INTER_LINEAR) resized the training PNGs: half-pixel centres, no anti-aliasing."""
    x = torch.as_tensor(specs).float().unsqueeze(1)  # (n, 1, 256, 512)
    w, h = im_size
    if (h, w) != (SPEC_HEIGHT, SPEC_WIDTH):
        x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False, antialias=False)
    return x


def predict(net, x, device, multi_label=False, im_dim=1, batch_size=32):
    """Softmax (sigmoid for multi-label) of windows x (n, 1, H, W) -> numpy float32 (n, classes);
    port of AED_test.getPredictionFuntion. On CUDA channels_last and fp16 autocast (fp16 measured
    23 % faster than bf16 on an H100, and softmax outputs need no bf16 range)."""
    cuda = device.type == 'cuda'
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device, non_blocking=True)
            if im_dim != xb.shape[1]:
                xb = xb.expand(-1, im_dim, -1, -1)  # grey spectrogram -> colour model
            if cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast('cuda', dtype=torch.float16, enabled=cuda):
                logits = net(xb).float()
            out.append((torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)).cpu())
    return torch.cat(out).numpy()


def prediction_pooling(p):
    """Average the window predictions of a file (port of AED_test.predictionPooling)."""
    return p.mean(axis=0) if p.ndim == 2 else p


def rank_predictions(scores, classes, threshold=0.0, top_k=None):
    """[(label, confidence)] best first, confidences >= threshold, at most top_k (None = all)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind='stable')
    return [(classes[i], float(scores[i])) for i in order if scores[i] >= threshold][:top_k]


def cut_windows(sig, bounds, settings, im_size, device, on_torch=False):
    """Windows of one signal block as network input (n, 1, H, W) on device, and the silent ones:
    numpy's DFT (the fastest on a CPU), or with on_torch torch's on the device, in chunks."""
    rate, seconds = settings['sample_rate'], settings['length']
    sig = sig.to(device, non_blocking=True) if on_torch else sig
    if sig.dtype == torch.int16:  # whole 16-bit values (model.stream): k / 32768, exact in float32
        sig = sig * (1 / 32768)
    if not on_torch:
        specs, constant = spectrograms(sig.numpy(), bounds, rate, seconds)
        return prepare_windows(specs, im_size), constant
    parts, constant = [], []
    for start in range(0, len(bounds), GPU_SPEC_WINDOWS):
        specs, silent = spectrograms(sig, bounds[start:start + GPU_SPEC_WINDOWS], rate, seconds)
        parts.append(prepare_windows(specs, im_size))
        constant += [start + i for i in silent]
    return torch.cat(parts), constant


def batch_rows(n, batch_size, pad):
    """Rows of a batch of n windows: with pad, the next power of two (at most batch_size), so
    that cudnn's autotuner and --compile see few shapes (rows are independent in eval mode)."""
    return min(batch_size, 1 << (n - 1).bit_length()) if pad else n


class _Batches:
    """One input buffer of batch_size windows, filled across blocks and files: short clips still
    fill every batch, and one buffer leaves no heap fragmentation over hours of audio."""

    def __init__(self, model, batch_size, pad):
        self.model, self.size, self.pad = model, batch_size, pad
        self.buffer, self.owners, self.filled = None, [], 0  # owners: (file result, rows)

    def add(self, x, result):
        """Copy windows x (n, 1, H, W) in; run the network on every batch they fill."""
        if self.buffer is None:
            self.buffer = x.new_zeros((self.size, *x.shape[1:]))
        while len(x):
            k = min(self.size - self.filled, len(x))
            self.buffer[self.filled:self.filled + k] = x[:k]
            self.owners.append((result, k))
            result['waiting'] += k
            self.filled, x = self.filled + k, x[k:]
            if self.filled == self.size:
                self.run()

    def run(self):
        """Predict the buffered windows and hand each file its rows."""
        n, m = self.filled, self.model
        if not n:
            return
        rows = batch_rows(n, self.size, self.pad)
        probs = predict(m.net, self.buffer[:rows], m.device, m.multi_label, m.im_dim, self.size)
        for result, k in self.owners:
            result['probs'].append(probs[:k])
            result['waiting'] -= k
            probs = probs[k:]
        self.owners, self.filled = [], 0


def predict_stream(model, items, settings, batch_size=32, pad=None):
    """Predict a stream of SignalBlocks items; yield one result per file, in order: path, error (None
    or the reason), probs (windows, classes) or None, source_rate, bounds (samples at the analysis
    rate), samples (the file's, at that rate), constant (silent windows), seconds (opening to last
    prediction). pad: default on CUDA."""
    batches = _Batches(model, batch_size, model.device.type == 'cuda' if pad is None else pad)
    files, done = {}, 0  # order -> the file's result so far; results yielded
    for item in items:
        result = files.setdefault(item['order'], {
            'path': item['path'], 'error': None, 'probs': [], 'bounds': [],
            'constant': [], 'source_rate': None, 'start': item['start'], 'waiting': 0})
        result['last'] = item['last']
        if item['error'] is not None:
            result['error'] = item['error']
        else:
            x, silent = item.get('x'), item.get('silent')
            if x is None:  # cut here: torch's DFT on a GPU, numpy's on a CPU
                x, silent = cut_windows(item['sig'], item['bounds'], settings, model.im_size, model.device,
                                        model.device.type != 'cpu')
            result['source_rate'], result['samples'] = item['source_rate'], item['samples']
            result['bounds'] += [(a + item['offset'], b + item['offset']) for a, b in item['bounds']]
            result['constant'] += [item['first'] + i for i in silent]
            batches.add(x, result)
        done = yield from _finished(files, done)
    batches.run()
    yield from _finished(files, done)


def _finished(files, done):
    """Yield the results of files done, done + 1, ... whose windows are all predicted."""
    while done in files and files[done]['last'] and not files[done]['waiting']:
        result = files.pop(done)
        result['probs'] = np.concatenate(result['probs']) if result['error'] is None else None
        result['seconds'] = time.time() - result.pop('start')
        done += 1
        yield result
    return done


def predict_files(model, paths, settings, batch_size=32, workers=0, watch=None):
    """predict_stream over files decoded by `workers` loader processes (0 = in this one), which on a
    CPU cut the windows too; watch(item) sees every item first. Port of AED_eval.getNextSpecBatch."""
    on_cpu = model.device.type == 'cpu' and workers > 0
    transform = functools.partial(cut_windows, settings=settings, im_size=model.im_size,
                                  device=model.device) if on_cpu else None
    cuda = model.device.type == 'cuda'
    blocks = SignalBlocks(paths, settings, GPU_BLOCK_SAMPLES if cuda else BLOCK_SAMPLES, transform)
    loader = block_loader(blocks, min(workers, len(paths)), cuda)
    if watch is not None:
        loader = (watch(item) or item for item in loader)
    return predict_stream(model, loader, settings, batch_size)
