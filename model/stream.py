"""Audio files as a stream of signal blocks, decoded in DataLoader workers (port of
AED_eval.getSignalChunk). A block holds whole windows, at most about BLOCK_SAMPLES samples plus
one window, so a recording of any length streams in bounded memory; its samples are those of
load_audio + resample of the whole file ('sinc' and files only librosa decodes are read whole)."""
import ctypes
import functools
import time

import numpy as np
import soundfile as sf
import torch

from model.audio import (INT_SCALES, AudioError, linear_resample_range, load_audio, read_mono,
                         resample, split_bounds)

# Samples at the analysis rate per block (about 24 s at 44.1 kHz, 4 MB of float32)
BLOCK_SAMPLES = 1 << 20
# The same where a GPU cuts the windows: fewer, larger spectrogram launches. On an H200, AED_eval's
# steady state went from 8,700 to 14,400 windows/s (40 files of 120 s) against 1 << 20
GPU_BLOCK_SAMPLES = 1 << 23

# What libsndfile raises for a file it cannot open or read to the end
READ_ERRORS = (sf.SoundFileError, OSError, ValueError, EOFError)


def _read(f, lo, hi, integers=False):
    """Samples lo..hi of an open file, mono float32 as load_audio gives them, or with integers
    (16-bit mono) its int16 values as they are, with no round trip through float."""
    try:  # only the decoding: an error here is a bad file, anything later a bug
        f.seek(lo)
        data = f.read(hi - lo, dtype='int16') if integers else read_mono(f, hi - lo)
    except READ_ERRORS as e:
        raise AudioError(f'{type(e).__name__}: {str(e).strip() or "read failed"}') from None
    if len(data) != hi - lo:
        raise AudioError('file is shorter than its header says')
    if not (integers or np.isfinite(data).all()):
        raise AudioError('file contains NaN or infinite samples')
    return data


def file_blocks(path, settings, block_samples=BLOCK_SAMPLES):
    """Yield a dict per block: sig (numpy float32, or int16 of whole 16-bit values), bounds in it,
    first (window number), offset (first sample), source_rate, windows, samples (the file's, at the
    analysis rate: event times need the exact duration), last; AudioError if bad."""
    rate = settings['sample_rate']
    try:
        f = sf.SoundFile(str(path)) if settings['resample'] == 'linear' else None
    except READ_ERRORS:
        f = None  # load_audio gives the reason, or tries librosa
    if f is None:
        sig, source_rate, int_scale = load_audio(path)
        sig = resample(sig, source_rate, rate, settings['resample'], int_scale)
        yield from _blocks(lambda a, b: sig[a:b], len(sig), source_rate, settings, block_samples)
        return
    with f:
        if not f.frames:
            raise AudioError('file has no audio samples')
        read, n_new, scale = functools.partial(_read, f), f.frames, INT_SCALES.get(f.subtype)
        if f.samplerate != rate:  # the samples model.audio.resample gives for the whole file
            n_new = int(f.frames * rate / f.samplerate)
            if n_new == 0:
                raise AudioError('file is too short to resample')
            read = functools.partial(linear_resample_range, read, f.frames, n_new, int_scale=scale)
        # 16-bit mono, or 16-bit resampled (rounded back to the grid): half the bytes to the main
        # process. Not stereo at the same rate: its averaged samples fall between the integers.
        if scale == 32768 and f.samplerate == rate and f.channels == 1:
            read = functools.partial(_read, f, integers=True)
        elif scale == 32768 and f.samplerate != rate:
            read = functools.partial(_as_int16, read)
        yield from _blocks(read, n_new, f.samplerate, settings, block_samples)


def _as_int16(read, a, b):
    """Samples k / 32768 as the integers k (exact)."""
    return np.rint(read(a, b) * np.float32(32768)).astype(np.int16)


def _blocks(read, n_new, source_rate, settings, block_samples):
    bounds = split_bounds(n_new, settings['sample_rate'], settings['length'], settings['overlap'])
    hop = bounds[1][0] - bounds[0][0] if len(bounds) > 1 else 1
    per_block = max(1, block_samples // hop)
    for first in range(0, len(bounds), per_block):
        part = bounds[first:first + per_block]
        offset = part[0][0]
        yield {'sig': read(offset, max(b for _, b in part)), 'first': first, 'offset': offset,
               'bounds': [(a - offset, b - offset) for a, b in part], 'source_rate': source_rate,
               'windows': len(bounds), 'samples': n_new, 'last': first + per_block >= len(bounds)}


class SignalBlocks(torch.utils.data.IterableDataset):
    """Files -> block items in the workers (file k to worker k % workers): file_blocks' dicts plus
    order (position in paths), path, start (time.time() on opening, as the original timed) and
    error: None, or why the file could not be decoded (then the file's last item, with no signal).
    A transform (sig, bounds) -> (x, silent) makes items carry x and silent instead of sig."""

    def __init__(self, paths, settings, block_samples=BLOCK_SAMPLES, transform=None):
        self.paths, self.settings = paths, settings
        self.block_samples, self.transform = block_samples, transform

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for order in range(worker, len(self.paths), workers):
            head = {'order': order, 'path': self.paths[order], 'error': None, 'start': time.time()}
            try:
                for block in file_blocks(head['path'], self.settings, self.block_samples):
                    item = {**head, **block, 'sig': torch.from_numpy(block['sig'])}
                    if self.transform is not None:
                        item['x'], item['silent'] = self.transform(item.pop('sig'), block['bounds'])
                    yield item
            except AudioError as e:
                yield {**head, 'error': str(e), 'last': True}


def _keep_freed_memory(_worker_id):
    """Let a loader worker's heap keep freed memory (glibc only): glibc returned each block's
    few MB to the OS and page-faulted them back, making workers 40 % slower on the demo split."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: blocks under 64 MB come from the heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MB free in it
    except (OSError, AttributeError):
        pass  # not glibc: its default is fine


def block_loader(blocks, workers, pin_memory):
    """A DataLoader of a SignalBlocks' items, decoded by `workers` processes (0 = here)."""
    return torch.utils.data.DataLoader(blocks, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       worker_init_fn=_keep_freed_memory)
