"""Background mixing on images (model/mixing.py) against mixing the audio, and what it costs per item.

On make_demo clips (each event class, a random background file, the first 3 s):
the spectrogram image of the audio mix at EBR r dB (what AED_spec would make of
it, read as training reads it: uint8 levels resized to --im-size) against the two
images mixed by model.mixing.mix_background at r, and three variants: the sum of
magnitudes instead of the power sum, renormalising to [0, 1] as the original's
batch mixing did, and both (the original's mixing with a gain). Prints the mean
absolute difference and the correlation per r, the gap between the RMS ratio of the
unnormalised spectrograms and the audio EBR (the Parseval check), and the loading time of one
training item with and without mixing (PNG decode + resize, medians).

    python -m bench.bench_mixing
    python -m bench.bench_mixing --im-size 512 256 --clips 4
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.audio import NFFT, frame_params, spectrograms  # noqa: E402
from model.data import load_image  # noqa: E402
from model.mixing import mix_background  # noqa: E402

RATE, SECONDS = 44100, 3


def image(sig, im_size):
    levels, _ = spectrograms(sig.astype(np.float32), [(0, len(sig))], RATE, SECONDS, uint8=True)
    return cv2.resize(levels[0], tuple(im_size))[None].astype(np.float32) / 255


def magnitudes(sig):
    """AED_spec's magnitude spectrogram before its normalisation: frames cut to NFFT samples."""
    length, step = frame_params(RATE, SECONDS)
    frames = np.lib.stride_tricks.sliding_window_view(sig, NFFT)[:len(sig) - length + 1:step]
    return np.abs(np.fft.rfft(frames, n=NFFT))


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def variant(name, event, back, ebr):
    """mix_background, or one of the variants it was measured against."""
    if name == 'model.mixing':
        return mix_background(event, back, ebr)
    gain = 10 ** (ebr / 20) * rms(back) / rms(event)
    mixed = gain * event + back if 'magnitude' in name else np.sqrt((gain * event) ** 2 + back ** 2)
    if 'renorm' in name:
        mixed = (mixed - mixed.min()) / mixed.max()
    return np.clip(mixed / max(gain, 1.0), 0, 1) if 'renorm' not in name else mixed


def compare(wav, im_size, clips, ratios, rng):
    """Rows of (variant, {r: (mean abs difference, correlation)}) and the Parseval gaps (dB)."""
    names = ['model.mixing', 'magnitude sum', 'power sum, renorm', 'magnitude sum, renorm']
    scores = {n: {r: [] for r in ratios} for n in names}
    gaps = []
    backgrounds = sorted((wav / 'background').glob('*.wav'))
    n = SECONDS * RATE
    for cls in sorted(p for p in wav.iterdir() if p.is_dir() and p.name != 'background'):
        for path in sorted(cls.glob('*.wav'))[:clips]:
            event = sf.read(path)[0][:n]
            back = sf.read(backgrounds[rng.integers(len(backgrounds))])[0][:n]
            ev_img, bg_img = image(event, im_size), image(back, im_size)
            for r in ratios:
                scaled = event * rms(back) / rms(event) * 10 ** (r / 20)
                target = image(scaled + back, im_size)
                gaps.append(20 * np.log10(rms(magnitudes(scaled)) / rms(magnitudes(back))) - r)
                for name in names:
                    mixed = variant(name, ev_img, bg_img, r)
                    scores[name][r].append((np.abs(mixed - target).mean(),
                                            np.corrcoef(mixed.ravel(), target.ravel())[0, 1]))
    return scores, np.array(gaps)


def item_times(spec, im_size, rounds=5):
    """Median seconds to load a training item: one PNG; two PNGs and a mix."""
    pngs = sorted(spec.rglob('*.png'))[:40]
    plain, mixed = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for p in pngs:
            load_image(p, im_size, 1)
        plain.append((time.perf_counter() - start) / len(pngs))
        start = time.perf_counter()
        for p, q in zip(pngs, pngs[::-1]):
            mix_background(load_image(p, im_size, 1), load_image(q, im_size, 1), 0.0)
        mixed.append((time.perf_counter() - start) / len(pngs))
    return statistics.median(plain), statistics.median(mixed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--im-size', type=int, nargs=2, default=[128, 64], metavar=('W', 'H'))
    p.add_argument('--clips', type=int, default=8, help='clips per event class')
    args = p.parse_args(argv)
    import AED_spec
    from dataset import make_demo
    ratios = [-6, -3, 0, 3, 6]
    with tempfile.TemporaryDirectory() as tmp:
        make_demo.main(['--out', tmp, '--train', str(args.clips), '--test', '0', '--no-examples',
                        '--scenes', '0'])
        wav = Path(tmp) / 'train' / 'wav'
        scores, gaps = compare(wav, args.im_size, args.clips, ratios, np.random.default_rng(0))
        AED_spec.main(['--src', str(wav), '--dst', str(Path(tmp) / 'spec'), '--workers', '1'])
        plain, mixed = item_times(Path(tmp) / 'spec', args.im_size)
    print(f'\nimage mix vs the image of the audio mix, {args.im_size[0]}x{args.im_size[1]}: '
          f'mean absolute difference / correlation')
    print('| mixing | ' + ' | '.join(f'{r:+d} dB' for r in ratios) + ' | all |')
    print('|---|' + '---:|' * (len(ratios) + 1))
    for name, by_ratio in scores.items():
        cells = [np.mean(by_ratio[r], axis=0) for r in ratios]
        cells.append(np.mean([x for r in ratios for x in by_ratio[r]], axis=0))
        print(f'| {name} | ' + ' | '.join(f'{d:.4f} / {c:.3f}' for d, c in cells) + ' |')
    print(f'spectrum RMS ratio - audio EBR: mean {gaps.mean():+.2f} dB, sd {gaps.std():.2f} dB')
    print(f'loading one item: {plain * 1000:.2f} ms, with a mix {mixed * 1000:.2f} ms '
          f'({mixed / plain:.2f}x)')


if __name__ == '__main__':
    main()
