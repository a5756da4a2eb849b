"""Audio loading, resampling, chunking and the spectrogram (port of AED_spec.py), in numpy and torch (GPU)."""
import functools
import json
import warnings
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

# Window length and step in seconds for each supported chunk length (the original's settings)
SPEC_SETTINGS = {2: (0.015, 0.0068), 3: (0.02, 0.00585), 5: (0.05, 0.0097),
                 10: (0.05, 0.0195), 30: (0.05, 0.0585)}
NFFT = 511
SPEC_HEIGHT, SPEC_WIDTH = 256, 512

# Formats libsndfile decodes itself; librosa is tried only for other files
LIBSNDFILE_EXTENSIONS = {'.wav', '.flac', '.ogg', '.oga', '.mp3', '.aif', '.aiff', '.au',
                         '.snd', '.w64', '.caf', '.opus'}
# Files that folder inputs (AED_test.py --filenames DIR) treat as audio
AUDIO_EXTENSIONS = LIBSNDFILE_EXTENSIONS | {'.m4a', '.wma', '.aac'}

# Full scale of integer PCM sample types, as libsndfile's float read divides by it
INT_SCALES = {'PCM_U8': 2 ** 7, 'PCM_S8': 2 ** 7, 'PCM_16': 2 ** 15, 'PCM_24': 2 ** 23,
              'PCM_32': 2 ** 31}

# Written by AED_spec.py beside the class folders; AED_train.py copies it into the checkpoint
SETTINGS_FILE = '.spec_settings.json'


class AudioError(Exception):
    """A file that cannot be turned into spectrograms; the message says why."""


def class_folders(root):
    """Sub-folders of root are classes: ([(class folder, sorted files)], warnings), hidden entries ignored."""
    entries = sorted(p for p in Path(root).iterdir() if not p.name.startswith('.'))
    messages = [f'WARNING: {p}: not in a class folder, ignored' for p in entries if not p.is_dir()]
    folders = []
    for class_dir in (p for p in entries if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith('.'))
        if not files:
            messages.append(f'WARNING: {class_dir}: class folder has no audio files')
        folders.append((class_dir, files))
    return folders, messages


def spec_defaults(length, overlap, sample_rate, resample):
    """The spectrogram-settings dict (SETTINGS_FILE, a checkpoint's 'spec'), built in one place."""
    return {'length': length, 'overlap': overlap, 'sample_rate': sample_rate, 'resample': resample}


def write_spec_settings(folder, settings):
    (Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings, sort_keys=True) + '\n')


def read_spec_settings(folder):
    """The settings AED_spec.py recorded for a folder, or None (none, or unreadable)."""
    try:
        settings = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def read_mono(f, frames=-1):
    """The next `frames` (-1 = all) of an open SoundFile as mono float32, for load_audio and model.stream."""
    if f.subtype == 'PCM_16':  # numpy converts 15x faster than libsndfile
        raw = f.read(frames, dtype='int16', always_2d=True)  # (N, C)
        # the same values as libsndfile's float read: int / 32768
        data = np.multiply(raw, np.float32(1 / 32768), dtype=np.float32)
    else:
        data = f.read(frames, dtype='float32', always_2d=True)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def load_audio(path):
    """(mono float32 signal in [-1, 1], rate, int_scale) of a file, or AudioError; int_scale is the full
    scale of an integer source's samples (INT_SCALES), None for float and compressed sources."""
    import soundfile as sf
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise AudioError('file is empty')
    try:
        with sf.SoundFile(str(path)) as f:
            rate, int_scale = f.samplerate, INT_SCALES.get(f.subtype)
            data = read_mono(f)
    except (sf.SoundFileError, OSError, ValueError, EOFError) as error:
        reason = (str(error).strip().splitlines() or ['unknown format'])[0]
        unreadable = AudioError(f'not a readable audio file ({reason})')
        if Path(path).suffix.lower() in LIBSNDFILE_EXTENSIONS:
            raise unreadable from None  # librosa would only call libsndfile again
        import librosa
        from audioread import DecodeError
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # librosa warns before audioread
                data, rate = librosa.load(str(path), sr=None, mono=True)
        except (sf.SoundFileError, DecodeError, librosa.util.exceptions.LibrosaError,
                OSError, ValueError, EOFError, RuntimeError):  # what a file they cannot decode raises
            raise unreadable from None
        int_scale = None
    if data.size == 0:
        raise AudioError('file has no audio samples')
    if not np.isfinite(data).all():
        raise AudioError('file contains NaN or infinite samples')
    return data, int(rate), int_scale


def resample(sig, rate, target_rate=44100, method='linear', int_scale=None):
    """Resample a mono signal, 'linear' (port of AED_spec.changeSampleRate) or 'sinc' (torchaudio).

    With int_scale (load_audio's) the samples are rounded onto the source's integer grid, as the
    original cast them back to the source's type; quiet recordings show that rounding.
    """
    if rate == target_rate:
        return sig
    if method == 'linear':
        n_new = int(len(sig) * target_rate / rate)
        return linear_resample_range(lambda lo, hi: sig[lo:hi], len(sig), n_new, 0, n_new, int_scale)
    if method == 'sinc':
        import torch
        import torchaudio.functional as AF
        out = AF.resample(torch.from_numpy(sig), rate, target_rate)
        return _round_to_grid(out.numpy(), int_scale)
    raise ValueError(f"resample method must be 'linear' or 'sinc', got {method!r}")


def _round_to_grid(x, int_scale):
    """Round x (in place) to multiples of 1 / int_scale, half to even as np.round does."""
    if int_scale:
        x *= int_scale
        np.round(x, out=x)
        x *= 1 / int_scale
    return x


def linear_resample_range(read, n, n_new, start, stop, int_scale=None):
    """Samples start..stop of the linear resampling of n samples, read(lo, hi), onto n_new points.

    Positions do not depend on the range, so model.stream's blocks join into the whole-file result.
    """
    # blocks of 32k points: np.interp of a whole minute builds ~150 MB of float64 temporaries and runs
    # 2x slower. Rounding each float64 block, while it is in cache, gives the original's samples exactly.
    step = (n - 1) / max(n_new - 1, 1)
    out = np.empty(stop - start, dtype=np.float32)
    for a in range(start, stop, 1 << 15):
        positions = np.arange(a, min(a + (1 << 15), stop)) * step
        lo, hi = int(positions[0]), min(int(positions[-1]) + 2, n)
        block = np.interp(positions, np.arange(lo, hi), read(lo, hi))
        out[a - start:a - start + len(positions)] = _round_to_grid(block, int_scale)
    return out


def split_bounds(n_samples, rate, seconds, overlap):
    """(start, stop) samples of the chunks (port of AED_spec.splitSignal; defect 10: check.spec_window)."""
    step = int((seconds - overlap) * rate)
    length = int(seconds * rate)
    bounds = [(i, min(i + length, n_samples)) for i in range(0, n_samples, step)]
    bounds = [(a, b) for a, b in bounds if b - a >= rate]
    return bounds or [(0, n_samples)]


def frame_params(rate, seconds):
    """Frame length and step in samples, rounded half up as python_speech_features does
    (port of AED_spec.getSpecSettings; the FFT size is NFFT)."""
    return tuple(int(Decimal(s * rate).quantize(Decimal('1'), rounding=ROUND_HALF_UP))
                 for s in SPEC_SETTINGS[seconds])


def _frame_count(n, frame_len, frame_step):
    """Frames of a chunk of n samples, as python_speech_features.framesig counts them."""
    return 1 if n <= frame_len else 1 + -(-(n - frame_len) // frame_step)


def _frames(chunk, frame_len, frame_step):
    """Rectangular frames (F, NFFT) of one chunk, as python_speech_features.framesig cuts them, each
    cut or zero-padded to NFFT samples as rfft(n=NFFT) would."""
    width = min(frame_len, NFFT)
    n_frames = _frame_count(len(chunk), frame_len, frame_step)
    need = (n_frames - 1) * frame_step + width
    if need > len(chunk):
        chunk = np.concatenate([chunk, np.zeros(need - len(chunk), dtype=chunk.dtype)])
    frames = np.lib.stride_tricks.sliding_window_view(chunk, width)[::frame_step][:n_frames]
    return frames if width == NFFT else np.pad(frames, ((0, 0), (0, NFFT - width)))


@functools.lru_cache(maxsize=None)
def _dft511_weights():
    """The small DFT matrices of dft511_magnitudes and the image row of each bin."""
    # stage 1, the 73-point DFT at bins j = 0..36 of real input x[0..72]:
    # cos is even and sin odd in m <-> 73 - m, so with u[m] = x[m] + x[73 - m] and
    # v[m] = x[m] - x[73 - m] (m = 1..36): re = x[0] + cos @ u, im = -sin @ v
    j, m = np.arange(37)[:, None], np.arange(1, 37)
    angle = 2 * np.pi * j * m / 73                                   # (37, 36)
    re_weights = np.concatenate([np.ones((37, 1)), np.cos(angle)], axis=1)  # on [x[0]; u]
    im_weights = -np.sin(angle)                                      # on v; row 0 is zero
    # stage 2: block j holds the seven bins k < 256 with k % 73 in {j, 73 - j};
    # for those at 73 - j the 73-point DFT value is the conjugate of bin j's
    bins = np.concatenate([j + 73 * np.arange(4), 73 - j + 73 * np.arange(3)], axis=1)  # (37, 7)
    sign = np.array([1, 1, 1, 1, -1, -1, -1])[:, None]             # +1 or conjugate
    theta = -2 * np.pi * bins[:, :, None] * np.arange(7) / 511      # (37, 7 bins, 7 r)
    c, s = np.cos(theta), np.sin(theta)
    # bin k = sum_r (c + i s) * (re_r + i sign im_r): rows 0-6 real parts, 7-13
    # imaginary parts, on the block's inputs (re_0..re_6, im_0..im_6)
    mix = np.block([[c, -sign * s], [s, sign * c]])                  # (37, 14, 14)
    mix[0, [4, 5, 6, 11, 12, 13]] = 0  # block 0's last three bins repeat its first three
    row_of_bin = np.empty(256, dtype=np.intp)
    row_of_bin[bins[1:].ravel()] = np.arange(7, 259)
    row_of_bin[bins[0, :4]] = np.arange(4)
    return (re_weights.astype(np.float32), im_weights.astype(np.float32),
            mix.astype(np.float32), row_of_bin[::-1].copy())


def dft511_magnitudes(frames):
    """abs(rfft(frames, n=511)) of real frames (F, 511) as (256, F) image rows, top bin first.

    511 = 7 * 73: 73-point DFTs of the 7 decimated sequences x[7m + r], then a 7-term twiddled sum
    per bin (Cooley-Tukey), both small matrix products that BLAS runs near peak speed, where FFT
    libraries take a slow generic pass for the prime 73. bench_spec (10 x 60 s at 44.1 kHz):
    AED_spec.py ran at 4.05x the reference with it and 2.86x with scipy.fft, under the >= 4x goal.
    """
    import cv2
    re_weights, im_weights, mix, rows = _dft511_weights()
    f = frames.shape[0]
    x = cv2.transpose(np.asarray(frames, dtype=np.float32)).reshape(73, 7 * f)  # row m: x[7m + r]
    u = np.empty((37, 7 * f), dtype=np.float32)
    u[0] = x[0]
    np.add(x[1:37], x[72:36:-1], out=u[1:])
    a = np.empty((37, 2, 7 * f), dtype=np.float32)  # (j, re/im, (r, frame))
    np.matmul(re_weights, u, out=a[:, 0])
    np.matmul(im_weights, x[1:37] - x[72:36:-1], out=a[:, 1])
    y = np.matmul(mix, a.reshape(37, 14, f)).reshape(37, 14 * f)
    mag = cv2.magnitude(y[:, :7 * f], y[:, 7 * f:])
    return np.take(mag.reshape(259, f), rows, axis=0, mode='clip')


@functools.lru_cache(maxsize=None)
def _blas_controller():
    # finding the loaded BLAS libraries takes ~1 ms: once per process, not per file
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def spectrograms(sig, bounds, rate=44100, seconds=3, uint8=False):
    """Port of AED_spec.getSpecFromSignal: the (n, 256, 512) images of sig's chunks `bounds`, and the
    indices of constant chunks (their images are all zero).

    sig is numpy or a torch tensor (the images keep its type and device). Each image is scaled to
    [0, 1] by its own min and max, top bin first; uint8=True (numpy only) gives round(255 * image).
    """
    if not isinstance(sig, np.ndarray):
        return _torch_spectrograms(sig, bounds, rate, seconds)
    import cv2
    frame_len, frame_step = frame_params(rate, seconds)
    out = np.zeros((len(bounds), SPEC_HEIGHT, SPEC_WIDTH), dtype=np.uint8 if uint8 else np.float32)
    constant = []
    # threaded BLAS stalls whenever another process holds a core, and these products are too
    # small to gain from threads: AED_spec.py took 7x longer with one worker on a 2-core machine
    with _blas_controller().limit(limits=1, user_api='blas'):
        for i, (a, b) in enumerate(bounds):
            mag = dft511_magnitudes(_frames(sig[a:b], frame_len, frame_step))  # (256, frames)
            low, high = cv2.minMaxLoc(mag)[:2]
            if not high > low:
                constant.append(i)
                continue
            mag = mag[:, :SPEC_WIDTH]  # scaled by the whole image, then cropped (zero padding on the right)
            dst, peak = out[i, :, :mag.shape[1]], high - low
            if uint8:  # one pass: round((mag - low) / peak * 255)
                cv2.convertScaleAbs(mag, dst=dst, alpha=255 / peak, beta=-low * 255 / peak)
            else:
                np.subtract(mag, np.float32(low), out=dst)
                np.divide(dst, np.float32(peak), out=dst)
    return out, constant


def _torch_spectrograms(sig, bounds, rate, seconds):
    """spectrograms() of a tensor: the windows start at a fixed hop, so all their frames are one
    view (windows, frames, width) of the signal. One rfft, no loop over windows."""
    import torch
    import torch.nn.functional as F
    frame_len, frame_step = frame_params(rate, seconds)
    width = min(frame_len, NFFT)
    sizes = [b - a for a, b in bounds]
    hop = bounds[1][0] - bounds[0][0] if len(bounds) > 1 else 1
    counts = [_frame_count(n, frame_len, frame_step) for n in sizes]
    n_frames = max(counts)
    span = max(max(sizes), (n_frames - 1) * frame_step + width)  # samples framed per window
    need = hop * (len(bounds) - 1) + span
    sig = sig.float()[bounds[0][0]:bounds[0][0] + need]
    sig = F.pad(sig, (0, need - len(sig)))  # zeros past the signal's end
    chunks = sig.unfold(0, span, hop)  # (W, span), a view that respects any slice of sig
    arange = functools.partial(torch.arange, device=sig.device)
    # samples past a window's own end are zeros, as framesig pads each chunk
    chunks = chunks * (arange(span) < torch.tensor(sizes, device=sig.device)[:, None])
    mags = torch.fft.rfft(chunks.unfold(1, width, frame_step)[:, :n_frames], n=NFFT).abs()  # (W, F, bins)
    # each window's min and max over its own frames only
    valid = arange(n_frames) < torch.tensor(counts, device=sig.device)[:, None]  # (W, F)
    low = mags.amin(dim=2).masked_fill_(~valid, float('inf')).amin(dim=1)
    peak = mags.amax(dim=2).masked_fill_(~valid, float('-inf')).amax(dim=1) - low
    constant = ~(peak > 0)
    scale = torch.where(constant, 0.0, 1 / peak)  # a constant window gives zeros
    # scaled by the whole image, then cropped; a short window's missing frames stay zero
    factor = scale[:, None, None] * valid[:, :SPEC_WIDTH, None]
    mags = (mags[:, :SPEC_WIDTH] - low[:, None, None]).mul_(factor)
    images = mags.flip(2).transpose(1, 2)  # (W, 256 bins, frames), the top bin first
    images = F.pad(images, (0, SPEC_WIDTH - images.shape[2])).contiguous()
    return images, constant.nonzero().flatten().tolist()


def file_spectrograms(path, seconds=3, overlap=2, rate=44100, resample_method='linear', uint8=False):
    """(specs, source_rate, bounds, constant) of one file; port of AED_spec.getMultiSpec."""
    sig, source_rate, int_scale = load_audio(path)
    sig = resample(sig, source_rate, rate, resample_method, int_scale)
    bounds = split_bounds(len(sig), rate, seconds, overlap)
    specs, constant = spectrograms(sig, bounds, rate, seconds, uint8=uint8)
    return specs, source_rate, bounds, constant
