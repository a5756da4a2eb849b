"""Audio loading, resampling, chunking and the paper's magnitude spectrogram.

Everything here is a pure function with explicit parameters. The spectrogram
code accepts numpy arrays (scipy.fft on the CPU, the fastest backend we
measured) or torch tensors (torch.fft, so it also runs on a GPU).
"""
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

# Window length and step in seconds for each supported chunk length
# (port of AED_spec.getSpecSettings).
SPEC_SETTINGS = {2: (0.015, 0.0068), 3: (0.02, 0.00585), 5: (0.05, 0.0097),
                 10: (0.05, 0.0195), 30: (0.05, 0.0585)}
NFFT = 511
SPEC_HEIGHT, SPEC_WIDTH = 256, 512

# Extensions tried first with soundfile; anything else still gets a try.
AUDIO_EXTENSIONS = {'.wav', '.flac', '.ogg', '.oga', '.mp3', '.aif', '.aiff',
                    '.au', '.snd', '.w64', '.caf', '.opus', '.m4a', '.wma', '.aac'}


class AudioError(Exception):
    """A file that cannot be turned into spectrograms; the message says why."""


def check_spec_params(seconds, overlap):
    """Validate chunk length and overlap; raise ValueError with a clear message."""
    if seconds not in SPEC_SETTINGS:
        supported = ', '.join(str(s) for s in sorted(SPEC_SETTINGS))
        raise ValueError(f'spectrogram length must be one of {supported} s, got {seconds}')
    if not 0 <= overlap < seconds:
        raise ValueError(f'overlap must be at least 0 and smaller than the spectrogram '
                         f'length ({seconds} s), got {overlap}')


def load_audio(path):
    """Read any file soundfile can decode (librosa as fallback), downmixed to mono.

    Returns (signal, rate): float32 of shape (N,), scaled to [-1, 1].
    """
    import soundfile as sf
    try:
        data, rate = sf.read(str(path), dtype='float32', always_2d=True)  # (N, C)
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    except Exception as sf_error:  # libsndfile raises several types
        try:
            import warnings
            import librosa
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # librosa warns before audioread
                data, rate = librosa.load(str(path), sr=None, mono=True)
        except Exception:
            reason = str(sf_error).strip().splitlines()[0] if str(sf_error).strip() else 'unknown format'
            raise AudioError(f'not a readable audio file ({reason})') from None
    if data.size == 0:
        raise AudioError('file has no audio samples')
    if not np.isfinite(data).all():
        raise AudioError('file contains NaN or infinite samples')
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)


def resample(sig, rate, target_rate=44100, method='linear'):
    """Resample a mono signal to target_rate.

    'linear' is the original's interpolation onto int(N * target / rate) points
    spanning the same duration (port of AED_spec.changeSampleRate); 'sinc' uses
    torchaudio's band-limited resampler.
    """
    if rate == target_rate:
        return sig
    if method == 'linear':
        n_new = int(len(sig) * target_rate / rate)
        if len(sig) < 2:
            return np.full(n_new, sig[0] if len(sig) else 0, dtype=np.float32)
        positions = np.linspace(0, len(sig) - 1, n_new)
        return np.interp(positions, np.arange(len(sig)), sig).astype(np.float32)
    if method == 'sinc':
        import torch
        import torchaudio.functional as AF
        out = AF.resample(torch.from_numpy(np.asarray(sig, dtype=np.float32)), rate, target_rate)
        return out.numpy()
    raise ValueError(f"resample method must be 'linear' or 'sinc', got {method!r}")


def split_bounds(n_samples, rate, seconds, overlap):
    """(start, stop) sample bounds of the overlapping chunks of a signal.

    Port of AED_spec.splitSignal: chunks shorter than 1 s are dropped, and a
    signal with no chunk left becomes one chunk.
    """
    check_spec_params(seconds, overlap)
    step = int((seconds - overlap) * rate)
    length = int(seconds * rate)
    bounds = [(i, min(i + length, n_samples)) for i in range(0, n_samples, step)]
    bounds = [(a, b) for a, b in bounds if b - a >= rate]
    return bounds or [(0, n_samples)]


def _round_half_up(x):
    return int(Decimal(x).quantize(Decimal('1'), rounding=ROUND_HALF_UP))


def frame_params(rate, seconds):
    """Frame length and step in samples, rounded as python_speech_features does."""
    check_spec_params(seconds, 0)
    winlen, winstep = SPEC_SETTINGS[seconds]
    return _round_half_up(winlen * rate), _round_half_up(winstep * rate)


def _frames(chunk, frame_len, frame_step, width, torch_mode):
    """Rectangular frames of one chunk, keeping the first `width` samples of each.

    Same frame count and zero padding as python_speech_features.framesig.
    """
    n = len(chunk)
    n_frames = 1 if n <= frame_len else 1 + int(np.ceil((n - frame_len) / frame_step))
    need = (n_frames - 1) * frame_step + width
    if torch_mode:
        import torch.nn.functional as F
        if need > n:
            chunk = F.pad(chunk, (0, need - n))
        return chunk.unfold(0, width, frame_step)[:n_frames]
    if need > n:
        chunk = np.concatenate([chunk, np.zeros(need - n, dtype=chunk.dtype)])
    return np.lib.stride_tricks.sliding_window_view(chunk, width)[::frame_step][:n_frames]


def spectrograms(sig, bounds, rate=44100, seconds=3, nfft=NFFT):
    """Magnitude spectrogram images of the chunks of one signal, in one batch.

    Port of AED_spec.getSpecFromSignal. `sig` is a 1-D numpy array or torch
    tensor; `bounds` comes from split_bounds. Returns float32 images of shape
    (n_chunks, 256, 512) in [0, 1], same type and device as `sig`: row 0 is the
    highest frequency bin, each image is scaled by its own min and max, and an
    all-constant chunk gives an all-zero image. Also returns a list of the
    chunk indices that were constant (so callers can warn).
    """
    torch_mode = not isinstance(sig, np.ndarray)
    frame_len, frame_step = frame_params(rate, seconds)
    width = min(frame_len, nfft)  # rfft(n=nfft) keeps only the first nfft samples
    frames = [_frames(sig[a:b], frame_len, frame_step, width, torch_mode) for a, b in bounds]
    counts = [len(f) for f in frames]
    if torch_mode:
        import torch
        mags = torch.fft.rfft(torch.cat(frames).float(), n=nfft).abs()  # (F, 256)
        out = torch.zeros((len(bounds), SPEC_HEIGHT, SPEC_WIDTH), dtype=torch.float32, device=sig.device)
    else:
        import scipy.fft
        mags = np.abs(scipy.fft.rfft(np.concatenate(frames).astype(np.float32, copy=False), n=nfft))
        out = np.zeros((len(bounds), SPEC_HEIGHT, SPEC_WIDTH), dtype=np.float32)
    constant = []
    offset = 0
    for i, count in enumerate(counts):
        mag = mags[offset:offset + count]  # (frames, bins)
        offset += count
        mag = mag - mag.min()
        peak = mag.max()
        if peak > 0:
            mag = mag / peak
        else:
            constant.append(i)
        # rotate 90 deg counter-clockwise: (bins, frames) with the top bin first,
        # then crop to 256 x 512 and leave the zero padding on the right
        rotated = mag.T.flip(0) if torch_mode else mag.T[::-1]
        rotated = rotated[:SPEC_HEIGHT, :SPEC_WIDTH]
        out[i, :rotated.shape[0], :rotated.shape[1]] = rotated
    return out, constant


def file_spectrograms(path, seconds=3, overlap=2, rate=44100, resample_method='linear',
                      device=None):
    """Read, downmix, resample, split and transform one file.

    Port of AED_spec.getMultiSpec. Returns (specs, source_rate, bounds, constant):
    specs is (n, 256, 512) float32 numpy, or a torch tensor on `device` if given.
    """
    sig, source_rate = load_audio(path)
    sig = resample(sig, source_rate, rate, resample_method)
    bounds = split_bounds(len(sig), rate, seconds, overlap)
    if device is not None:
        import torch
        sig = torch.from_numpy(sig).to(device)
    specs, constant = spectrograms(sig, bounds, rate, seconds)
    return specs, source_rate, bounds, constant


def to_uint8(specs):
    """Grey levels as written to PNG: round(spec * 255)."""
    return np.rint(np.asarray(specs) * 255.0).astype(np.uint8)
