"""Audio files as a stream of fixed-size signal blocks, decoded in DataLoader workers.

Workers only read, downmix and resample; the main process cuts the windows
from the blocks on its device (model.inference.predict_stream). A block holds
whole windows, so it can be cut on its own, and at most about BLOCK_SAMPLES
samples plus one window: a recording of any length streams in bounded memory.
The blocks are the same samples as load_audio + resample of the whole file
(the linear resampler interpolates each output sample from its two
neighbours, so it can run block by block); 'sinc' resampling and files that
only librosa decodes are read whole.

    blocks = SignalBlocks(['a.wav', 'b.flac'], settings)
    loader = block_loader(blocks, workers=2)
"""
import ctypes
import os

import numpy as np
import soundfile as sf
import torch

from model.audio import (INT_SCALES, AudioError, linear_resample_range, load_audio, read_mono,
                         resample, split_bounds)

# Samples at the analysis rate per block (about 24 s at 44.1 kHz, 4 MB of float32)
BLOCK_SAMPLES = 1 << 20

# What a bad file can raise while it is decoded; anything else is a bug and propagates
DECODE_ERRORS = (AudioError, sf.SoundFileError, OSError, ValueError, EOFError)


class _Source:
    """Mono float32 samples of an open file, read by range, as load_audio converts them."""

    def __init__(self, f):
        self.f, self.rate, self.int_scale = f, f.samplerate, INT_SCALES.get(f.subtype)
        self.frames = f.frames

    def read(self, lo, hi):
        self.f.seek(lo)
        data = read_mono(self.f, hi - lo)
        if len(data) != hi - lo:
            raise AudioError('file is shorter than its header says')
        if not np.isfinite(data).all():
            raise AudioError('file contains NaN or infinite samples')
        return np.ascontiguousarray(data, dtype=np.float32)


def _streamable(path, settings):
    """An open soundfile _Source when the file can be read block by block, else None."""
    if settings['resample'] != 'linear':
        return None
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, OSError, ValueError):
        return None  # load_audio gives the reason, or tries librosa
    if f.frames <= 0:
        f.close()
        return None
    return _Source(f)


def _as_int16(read):
    """A reader of samples k / 32768 that returns the integers k (exact), as int16."""
    return lambda a, b: np.rint(read(a, b) * np.float32(32768)).astype(np.int16)


def as_float(sig):
    """A block as float32 samples in [-1, 1] (int16 blocks are 16-bit PCM), numpy or torch."""
    if sig.dtype in (np.int16, torch.int16):
        return sig * (np.float32(1 / 32768) if isinstance(sig, np.ndarray) else 1 / 32768)
    return sig


def file_blocks(path, settings, block_samples=BLOCK_SAMPLES):
    """Yield (signal block, bounds inside it, number of its first window, source rate, last).

    A block is float32, or int16 for 16-bit sources (as_float converts it).
    """
    rate, seconds, overlap = settings['sample_rate'], settings['length'], settings['overlap']
    src = _streamable(path, settings)
    if src is None:  # read whole: load_audio raises AudioError for a bad file
        sig, source_rate, int_scale = load_audio(path)
        sig = resample(sig, source_rate, rate, settings['resample'], int_scale)
        n_new, read = len(sig), lambda a, b: sig[a:b]
    else:
        with src.f:
            source_rate = src.rate
            n_new = src.frames if src.rate == rate else int(src.frames * rate / src.rate)
            if n_new == 0:
                raise AudioError('file is too short to resample')
            if src.rate == rate:
                read = src.read
            else:  # the samples model.audio.resample gives for the whole file
                def read(a, b):
                    return linear_resample_range(src.read, src.frames, n_new, a, b, src.int_scale)
            if src.int_scale == 32768 and (src.rate != rate or src.f.channels == 1):
                read = _as_int16(read)  # on the 16-bit grid: half the bytes to the main process
            yield from _blocks(read, n_new, rate, seconds, overlap, source_rate, block_samples)
        return
    yield from _blocks(read, n_new, rate, seconds, overlap, source_rate, block_samples)


def _blocks(read, n_new, rate, seconds, overlap, source_rate, block_samples):
    bounds = split_bounds(n_new, rate, seconds, overlap)
    hop = bounds[1][0] - bounds[0][0] if len(bounds) > 1 else 1
    per_block = max(1, block_samples // max(hop, 1))
    for first in range(0, len(bounds), per_block):
        part = bounds[first:first + per_block]
        offset, end = part[0][0], max(b for _, b in part)
        yield (read(offset, end), [(a - offset, b - offset) for a, b in part], first, offset,
               source_rate, first + per_block >= len(bounds))


class SignalBlocks(torch.utils.data.IterableDataset):
    """Files -> block items in the workers: file k goes to worker k % workers.

    An item is a dict: order (position in paths), index (the caller's id),
    path, sig (float32 or int16 tensor, see as_float), bounds (inside the block), first (its first
    window's number), offset (its first sample), source_rate, last, and error
    (None, or the one-line reason a file could not be decoded: then the item
    is the file's last and carries no signal). Only decode errors become error
    items; any other exception is a bug and propagates. With a transform
    (sig, bounds) -> (x, silent windows), the workers also cut the windows and
    items carry x and silent instead of sig (for a CPU, where the workers are
    the device too and cut windows in parallel).
    """

    def __init__(self, paths, settings, indices=None, block_samples=BLOCK_SAMPLES, transform=None):
        self.paths = list(paths)
        self.indices = list(indices) if indices is not None else list(range(len(self.paths)))
        self.settings, self.block_samples, self.transform = dict(settings), block_samples, transform

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for order in range(worker, len(self.paths), workers):
            yield from self.items(order)

    def items(self, order):
        path = self.paths[order]
        head = {'order': order, 'index': self.indices[order], 'path': path, 'error': None}
        try:
            for sig, bounds, first, offset, source_rate, last in file_blocks(path, self.settings,
                                                                             self.block_samples):
                item = {**head, 'sig': torch.from_numpy(sig), 'bounds': bounds, 'first': first,
                        'offset': offset, 'source_rate': source_rate, 'last': last}
                if self.transform is not None:
                    item['x'], item['silent'] = self.transform(item.pop('sig'), bounds)
                yield item
        except DECODE_ERRORS as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            yield {**head, 'error': reason if isinstance(e, AudioError) else f'{type(e).__name__}: {reason}',
                   'last': True}


def default_workers(cores=None):
    """Decoding workers that leave a core for the network: cores - 1, between 1 and 8."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return max(1, min(8, (cores or 1) - 1))


def _as_is(item):
    return item


def _keep_freed_memory(_worker_id):
    """Let a loader worker's heap keep freed memory (glibc only).

    Each block's spectrograms allocate and free a few MB; glibc's adaptive
    thresholds returned them to the OS and page-faulted them back every time,
    which made the workers 40 % slower on the demo test split than in one process.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MB free in it
    except (OSError, AttributeError):
        pass  # not glibc: its default is fine


def block_loader(blocks, workers=1, pin_memory=False):
    """A DataLoader of a SignalBlocks' items, decoded by `workers` processes (0 = here)."""
    return torch.utils.data.DataLoader(blocks, batch_size=None, num_workers=workers,
                                       collate_fn=_as_is, pin_memory=pin_memory,
                                       worker_init_fn=_keep_freed_memory,
                                       prefetch_factor=2 if workers else None)
