"""Audio loading, resampling, chunking and the paper's magnitude spectrogram.

Everything here is a pure function with explicit parameters. The spectrogram
has one numpy path (AED_spec.py, and AED_eval/AED_test on a CPU) and one torch
twin (every window of a block at once, for the GPU).
"""
import functools
import json
import math
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

# The keys of a spectrogram-settings dict (AED_spec's .spec_settings.json, a checkpoint's 'spec')
SPEC_KEYS = ('length', 'overlap', 'sample_rate', 'resample')

# Written by AED_spec.py next to the class folders, read by AED_train.py, so a
# checkpoint records the settings its images were really made with
SETTINGS_FILE = '.spec_settings.json'


class AudioError(Exception):
    """A file that cannot be turned into spectrograms; the message says why."""


def class_folders(root):
    """The dataset layout shared by AED_spec and AED_eval: sub-folders are classes.

    Returns ([(class folder, sorted files)], warnings); hidden entries are
    ignored, and stray files at the top or an empty class folder are warned about.
    """
    folders, messages = [], []
    entries = sorted(p for p in Path(root).iterdir() if not p.name.startswith('.'))
    for stray in (p for p in entries if not p.is_dir()):
        messages.append(f'WARNING: {stray}: not in a class folder, ignored')
    for class_dir in (p for p in entries if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith('.'))
        if not files:
            messages.append(f'WARNING: {class_dir}: class folder has no audio files')
        folders.append((class_dir, files))
    return folders, messages


def spec_defaults(length, overlap, sample_rate, resample):
    """The spectrogram-settings dict, built in one place: scripts pass config.py's values."""
    return dict(zip(SPEC_KEYS, (length, overlap, sample_rate, resample)))


def write_spec_settings(folder, settings):
    """Record the extraction settings (a dict) of a spectrogram folder."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings, sort_keys=True) + '\n')


def read_spec_settings(folder):
    """The settings AED_spec.py recorded for a folder, or None (none, or unreadable)."""
    try:
        settings = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return settings if isinstance(settings, dict) else None


def window_problem(length, overlap, rate, length_label='length', overlap_label='overlap'):
    """Why windows of `length` s overlapping by `overlap` s cannot be cut at `rate` Hz, or None.

    The one wording of AED_spec, AED_eval and AED_test (through config_checks)
    and of split_bounds. None for length or overlap means "not known yet"
    (the model's): only the other one is checked.
    """
    if length is not None and length not in SPEC_SETTINGS:
        supported = ', '.join(str(s) for s in sorted(SPEC_SETTINGS))
        return f'{length_label} must be one of {supported} s, got {length!r}'
    number = isinstance(overlap, (int, float)) and not isinstance(overlap, bool)
    # the hop, int((length - overlap) * rate) samples, must be at least one or splitting never advances
    if overlap is None or number and overlap >= 0 and (length is None or (length - overlap) * rate >= 1):
        return None
    limit = 'the window length' if length is None else \
        f'{length_label} = {length} s by one sample (1/{rate} s) or more'
    return f'{overlap_label} must be at least 0 and smaller than {limit}, got {overlap!r}'


def read_mono(f, frames=-1):
    """The next `frames` (-1 = all) of an open soundfile.SoundFile as mono float32 in [-1, 1].

    Channels are averaged in float32. Shared by load_audio and the block
    reader of model.stream, so both give the same samples.
    """
    if f.subtype == 'PCM_16':  # numpy converts 15x faster than libsndfile
        raw = f.read(frames, dtype='int16', always_2d=True)  # (N, C)
        # the same values as libsndfile's float read: int / 32768
        data = np.multiply(raw, np.float32(1 / 32768), dtype=np.float32)
    else:
        data = f.read(frames, dtype='float32', always_2d=True)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def load_audio(path):
    """Read any file soundfile can decode (librosa as fallback), downmixed to mono.

    Returns (signal, rate, int_scale): float32 of shape (N,), scaled to
    [-1, 1], and the full scale of the source's integer samples (32768 for
    16-bit PCM; see INT_SCALES), or None for float and compressed sources.
    """
    import soundfile as sf
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise AudioError('file is empty')
    try:
        with sf.SoundFile(str(path)) as f:
            rate, int_scale = f.samplerate, INT_SCALES.get(f.subtype)
            data = read_mono(f)
    except (sf.SoundFileError, OSError, ValueError, EOFError) as sf_error:  # not decodable
        try:
            if Path(path).suffix.lower() in LIBSNDFILE_EXTENSIONS:
                raise sf_error  # librosa would only call libsndfile again
            import warnings
            import librosa
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # librosa warns before audioread
                data, rate = librosa.load(str(path), sr=None, mono=True)
                int_scale = None
        except _decode_errors():
            reason = str(sf_error).strip().splitlines()[0] if str(sf_error).strip() else 'unknown format'
            raise AudioError(f'not a readable audio file ({reason})') from None
    if data.size == 0:
        raise AudioError('file has no audio samples')
    if not np.isfinite(data).all():
        raise AudioError('file contains NaN or infinite samples')
    return np.ascontiguousarray(data, dtype=np.float32), int(rate), int_scale


def _decode_errors():
    """What soundfile, librosa and audioread raise for a file they cannot decode."""
    import librosa
    import soundfile as sf
    try:
        from audioread import DecodeError
    except ImportError:  # a librosa without the audioread fallback
        DecodeError = sf.SoundFileError
    return (sf.SoundFileError, DecodeError, librosa.util.exceptions.LibrosaError,
            OSError, ValueError, EOFError, RuntimeError)


def resample(sig, rate, target_rate=44100, method='linear', int_scale=None):
    """Resample a mono signal to target_rate.

    'linear' is the original's interpolation onto int(N * target / rate) points
    spanning the same duration (port of AED_spec.changeSampleRate); 'sinc' uses
    torchaudio's band-limited resampler. With int_scale (an integer source's
    full scale, from load_audio) the result is rounded back onto that integer
    grid, as the original cast interpolated samples back to the source's type;
    for quiet recordings that rounding is visible in the spectrogram.
    """
    if rate == target_rate:
        return sig
    if method == 'linear':
        n_new = int(len(sig) * target_rate / rate)
        return linear_resample_range(lambda lo, hi: sig[lo:hi], len(sig), n_new, 0, n_new, int_scale)
    if method == 'sinc':
        import torch
        import torchaudio.functional as AF
        out = AF.resample(torch.from_numpy(np.asarray(sig, dtype=np.float32)), rate, target_rate)
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
    """Samples start..stop of the linear resampling of n samples onto n_new points.

    read(lo, hi) returns source samples lo..hi, so a long file can be resampled
    block by block (model.stream): every output sample gets the same float64
    position whatever the range, so blocks join into the whole-file result.
    """
    if n < 2:
        return np.full(stop - start, read(0, n)[0] if n else 0, dtype=np.float32)
    # np.interp in blocks of 32k points: all at once it builds ~150 MB of
    # float64 temporaries per minute of audio and runs 2x slower. Rounding each
    # float64 block, while it is in cache, gives the original's samples exactly.
    step = (n - 1) / max(n_new - 1, 1)
    out = np.empty(stop - start, dtype=np.float32)
    for a in range(start, stop, 1 << 15):
        positions = np.arange(a, min(a + (1 << 15), stop)) * step
        lo, hi = int(positions[0]), min(int(positions[-1]) + 2, n)
        block = np.interp(positions, np.arange(lo, hi), read(lo, hi))
        out[a - start:a - start + len(positions)] = _round_to_grid(block, int_scale)
    return out


def split_bounds(n_samples, rate, seconds, overlap):
    """(start, stop) sample bounds of the overlapping chunks of a signal.

    Port of AED_spec.splitSignal: chunks shorter than 1 s are dropped, and a
    signal with no chunk left becomes one chunk. A length or overlap that
    cannot be split is a ValueError (defect 10).
    """
    problem = window_problem(seconds, overlap, rate)
    if problem:
        raise ValueError(problem)
    step = int((seconds - overlap) * rate)
    length = int(seconds * rate)
    bounds = [(i, min(i + length, n_samples)) for i in range(0, n_samples, step)]
    bounds = [(a, b) for a, b in bounds if b - a >= rate]
    return bounds or [(0, n_samples)]


def frame_params(rate, seconds):
    """Frame length and step in samples, rounded half up as python_speech_features does.

    Port of AED_spec.getSpecSettings (the FFT size is NFFT).
    """
    if seconds not in SPEC_SETTINGS:
        raise ValueError(window_problem(seconds, None, rate))
    return tuple(int(Decimal(s * rate).quantize(Decimal('1'), rounding=ROUND_HALF_UP))
                 for s in SPEC_SETTINGS[seconds])


def _frame_count(n, frame_len, frame_step):
    """Frames of a chunk of n samples, as python_speech_features.framesig counts them."""
    return 1 if n <= frame_len else 1 + -(-(n - frame_len) // frame_step)


def _frames(chunk, frame_len, frame_step):
    """Rectangular frames (F, NFFT) of one chunk, as python_speech_features.framesig cuts them.

    Each frame keeps its first NFFT samples (rfft(n=NFFT) drops the rest) and
    a frame shorter than NFFT is zero-padded, as rfft(n=NFFT) pads it.
    """
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


def dft511_workspace(max_frames):
    """Scratch memory for dft511_magnitudes calls of up to max_frames frames."""
    return {'x': np.empty(518 * max_frames, np.float32),   # frames, then stage 2 output
            'uv': np.empty(511 * max_frames, np.float32),  # folded input, then magnitudes
            'a': np.empty(518 * max_frames, np.float32),   # stage 1 output
            'out': np.empty(256 * max_frames, np.float32)}


def dft511_magnitudes(frames, work=None):
    """abs(rfft(frames, n=511)) of real frames (F, 511), as (256, F) image rows, top bin first.

    The same numbers as scipy.fft.rfft to float32 precision, in half its time:
    511 = 7 * 73, so the DFT splits (Cooley-Tukey, decimation in time) into
    73-point DFTs of the 7 decimated sequences x[7m + r] and then a 7-term
    twiddled sum per bin. Both stages are small dense matrix products that
    BLAS runs near peak speed; FFT libraries handle the prime factor 73 with a
    slow generic pass. Measured with bench_spec (10 x 60 s at 44.1 kHz, 3 runs
    side by side): AED_spec.py ran at 4.05x the reference with this DFT and at
    2.86x with scipy.fft (1 worker; 4.07x and 2.67x with 2), under the >= 4x goal.

    `work` (from dft511_workspace) is reused instead of allocating a few MB per
    call; fresh memory costs page faults that take longer than the maths. The
    result is then a view into `work`, valid until the next call.
    """
    import cv2
    re_weights, im_weights, mix, rows = _dft511_weights()
    f = frames.shape[0]
    work = work or dft511_workspace(f)

    def scratch(name, *shape):
        return work[name][:math.prod(shape)].reshape(shape)

    x = cv2.transpose(np.asarray(frames, dtype=np.float32), dst=scratch('x', 511, f))
    x = x.reshape(73, 7 * f)                 # row m holds x[7m + r] for all (r, frame)
    u, v = scratch('uv', 73, 7 * f)[:37], scratch('uv', 73, 7 * f)[37:]
    u[0] = x[0]
    np.add(x[1:37], x[72:36:-1], out=u[1:])
    np.subtract(x[1:37], x[72:36:-1], out=v)
    a = scratch('a', 37, 2, 7 * f)           # (j, re/im, (r, frame))
    np.matmul(re_weights, u, out=a[:, 0])
    np.matmul(im_weights, v, out=a[:, 1])
    y = np.matmul(mix, a.reshape(37, 14, f), out=scratch('x', 37, 14, f)).reshape(37, 14 * f)
    mag = cv2.magnitude(y[:, :7 * f], y[:, 7 * f:], magnitude=scratch('uv', 37, 7 * f))
    return np.take(mag.reshape(259, f), rows, axis=0, out=scratch('out', 256, f), mode='clip')


@functools.lru_cache(maxsize=None)
def _blas_controller():
    # finding the loaded BLAS libraries takes ~1 ms: once per process, not per file
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def spectrograms(sig, bounds, rate=44100, seconds=3, uint8=False):
    """Magnitude spectrogram images of the chunks of one signal.

    Port of AED_spec.getSpecFromSignal. `sig` is a 1-D numpy array or torch
    tensor; `bounds` comes from split_bounds. Returns float32 images of shape
    (n_chunks, 256, 512) in [0, 1], same type and device as `sig`: row 0 is the
    highest frequency bin, each image is scaled by its own min and max, and an
    all-constant chunk gives an all-zero image. Also returns a list of the
    chunk indices that were constant (so callers can warn). With uint8=True
    (numpy only) the images are the grey levels round(spec * 255) as uint8,
    which skips the float images (what AED_spec writes).
    """
    if not isinstance(sig, np.ndarray):
        if uint8:
            raise ValueError('uint8=True needs a numpy signal')
        return _torch_spectrograms(sig, bounds, rate, seconds)
    import cv2
    frame_len, frame_step = frame_params(rate, seconds)
    sig = np.asarray(sig, dtype=np.float32)
    work = dft511_workspace(max((_frame_count(b - a, frame_len, frame_step) for a, b in bounds), default=1))
    out = np.zeros((len(bounds), SPEC_HEIGHT, SPEC_WIDTH), dtype=np.uint8 if uint8 else np.float32)
    constant = []
    # threaded BLAS stalls whenever another process holds a core, and these products are too
    # small to gain from threads: AED_spec.py took 7x longer with one worker on a 2-core machine
    with _blas_controller().limit(limits=1, user_api='blas'):
        for i, (a, b) in enumerate(bounds):
            mag = dft511_magnitudes(_frames(sig[a:b], frame_len, frame_step), work)  # (256, frames)
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
    """spectrograms() of a torch tensor, every window at once (for the GPU).

    The windows of split_bounds start at a fixed hop, so all their frames are
    one view of the signal: (windows, frames, width). One rfft, then each
    window's min and max over its own valid frames. No loop over windows.
    """
    import torch
    import torch.nn.functional as F
    frame_len, frame_step = frame_params(rate, seconds)
    width = min(frame_len, NFFT)
    starts, sizes = [a for a, _ in bounds], [b - a for a, b in bounds]
    hop = starts[1] - starts[0] if len(bounds) > 1 else 1
    if starts != [starts[0] + hop * k for k in range(len(bounds))]:
        raise ValueError('window starts must be evenly spaced, as split_bounds gives them')
    counts = [_frame_count(n, frame_len, frame_step) for n in sizes]
    n_frames = max(counts)
    span = max(max(sizes), (n_frames - 1) * frame_step + width)  # samples framed per window
    need = hop * (len(bounds) - 1) + span
    sig = sig.float()[starts[0]:starts[0] + need]
    if need > len(sig):
        sig = F.pad(sig, (0, need - len(sig)))
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
    scale = torch.where(constant, 0.0, 1 / torch.where(constant, 1.0, peak))  # constant -> zeros
    mags = mags[:, :SPEC_WIDTH]  # scaled by the whole image, then cropped
    mags = (mags - low[:, None, None]).mul_(scale[:, None, None])
    if min(counts) < min(n_frames, SPEC_WIDTH):  # a short window: its missing frames stay zero
        mags.mul_(valid[:, :SPEC_WIDTH, None])
    # rotate 90 deg counter-clockwise: (W, bins, frames) with the top bin first,
    # then crop to 256 x 512 and leave the zero padding on the right
    images = mags.flip(2).transpose(1, 2)[:, :SPEC_HEIGHT]
    if images.shape[1:] != (SPEC_HEIGHT, SPEC_WIDTH):
        images = F.pad(images, (0, SPEC_WIDTH - images.shape[2], 0, SPEC_HEIGHT - images.shape[1]))
    return images.contiguous(), constant.nonzero().flatten().tolist()


def file_spectrograms(path, seconds=3, overlap=2, rate=44100, resample_method='linear', uint8=False):
    """Read, downmix, resample, split and transform one file.

    Port of AED_spec.getMultiSpec. Returns (specs, source_rate, bounds, constant):
    specs is (n, 256, 512) float32, or with uint8=True the grey levels round(spec * 255).
    """
    sig, source_rate, int_scale = load_audio(path)
    sig = resample(sig, source_rate, rate, resample_method, int_scale)
    bounds = split_bounds(len(sig), rate, seconds, overlap)
    specs, constant = spectrograms(sig, bounds, rate, seconds, uint8=uint8)
    return specs, source_rate, bounds, constant
