"""Reference spectrogram extraction, written from PORT-SPEC.md with the original's libraries.

It is the oracle for the pixel-parity tests and the baseline of bench_spec.py:
python_speech_features framing, scipy's interp1d resampling and cv2 PNG output,
one file after another in one process, as the 2017 script worked.

    python bench/reference_spec.py SRC_DIR DST_DIR
    python bench/reference_spec.py SRC_DIR DST_DIR --speclength 5 --overlap 4
"""
import argparse
import os
import sys

import cv2
import numpy as np
import python_speech_features as psf
import scipy.io.wavfile as wavfile
from scipy import interpolate

SETTINGS = {2: (0.015, 0.0068), 3: (0.02, 0.00585), 5: (0.05, 0.0097),
            10: (0.05, 0.0195), 30: (0.05, 0.0585)}


def resample_linear(sig, rate, target=44100):
    """Linear interpolation onto int(N * target / rate) points, rounded to the input type."""
    duration = sig.shape[0] / rate
    old_t = np.linspace(0, duration, sig.shape[0])
    new_t = np.linspace(0, duration, int(sig.shape[0] * target / rate))
    out = interpolate.interp1d(old_t, sig.T)(new_t).T
    return np.round(out).astype(sig.dtype), target


def chunks(sig, rate, seconds, overlap):
    out = []
    for i in range(0, len(sig), int((seconds - overlap) * rate)):
        piece = sig[i:i + seconds * rate]
        if len(piece) >= rate:
            out.append(piece)
    return out or [sig]


def spectrogram(sig, rate, seconds):
    winlen, winstep = SETTINGS[seconds]
    frames = psf.sigproc.framesig(sig, winlen * rate, winstep * rate, lambda n: np.ones((n,)))
    mag = np.rot90(psf.sigproc.magspec(frames, 511))
    mag -= mag.min()
    mag /= mag.max()
    mag = mag[:256, :512]
    image = np.zeros((256, 512), dtype='float32')
    image[:mag.shape[0], :mag.shape[1]] = mag
    return cv2.resize(image, (512, 256))


def file_spectrograms(path, seconds=3, overlap=2):
    rate, sig = wavfile.read(path)
    if rate != 44100:
        sig, rate = resample_linear(sig, rate)
    return [spectrogram(c, rate, seconds) for c in chunks(sig, rate, seconds, overlap)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--speclength', type=int, default=3)
    parser.add_argument('--overlap', type=int, default=2)
    args = parser.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)  # psf warns about truncated frames on every call
    total = 0
    for cls in sorted(os.listdir(args.src)):
        for name in sorted(os.listdir(os.path.join(args.src, cls))):
            out_dir = os.path.join(args.dst, cls)
            os.makedirs(out_dir, exist_ok=True)
            specs = file_spectrograms(os.path.join(args.src, cls, name), args.speclength, args.overlap)
            for n, spec in enumerate(specs):
                cv2.imwrite(os.path.join(out_dir, f'{os.path.splitext(name)[0]}_{n}.png'), spec * 255.0)
            total += len(specs)
    print('SPECS:', total)


if __name__ == '__main__':
    sys.exit(main())
