"""Generate a small synthetic acoustic-event dataset for trying out the pipeline.

The dataset has five sound classes that are easy to tell apart on a linear
0-22 kHz magnitude spectrogram, even when it is shrunk to 128x64 pixels, and
in any 3-second window of a file (every file is busy from start to end):

    beeps         tone beeps at one or two random pitches with a random duty cycle
    clicks        trains of short broadband clicks at a few clicks per second
    hum           a continuous harmonic stack on a low fundamental (50-180 Hz)
    noise_bursts  bursts of band-limited noise somewhere between 1.5 and 16 kHz
    siren         a continuous tone whose pitch sweeps up and down

plus a `background` class of recordings without events (coloured noise whose
colour and level drift slowly, over a faint rumble), and annotated scenes for
event detection: events of the five classes (1-4 s drawn, then trimmed to
where they sound), with random gaps and about one in five overlapped by the
next, on background at event-to-background ratios (EBR) of -6, 0 and +6 dB.
An event's EBR is its RMS over its annotated span against the background's
RMS over the same span.

Files are 44.1 kHz, mono, 16-bit PCM WAV. The same seed always gives
byte-identical files. Layout written under the output folder:

    train/wav/<class>/<class>_<NNN>.wav   training audio (input of AED_spec.py)
    test/<class>/<class>_<NNN>.wav        held-out audio (input of AED_eval.py)
    examples/<class>_example.wav          one longer file per class (AED_test.py)
    folds.csv                             with --folds K: every train and test file with a
                                          fold from 1 to K (file,label,fold; dataset.folds csv)
    scenes/wav/scene_<NN>_ebr<+E>.wav     long recordings with events (AED_eval.py --annotations)
    scenes/annotations/scene_<NN>_ebr<+E>.txt   their events, DCASE format: onset, offset, label

Examples:

    python dataset/make_demo.py
    python dataset/make_demo.py --train 40 --test 10 --seconds 5
    python dataset/make_demo.py --out /tmp/aed_demo --seed 7 --no-examples
    python dataset/make_demo.py --out /tmp/cvdemo --folds 5   # + folds.csv for crossval.sh
    python dataset/make_demo.py --scenes 6 --scene-seconds 120 --ebrs -6 0 6 --no-background
"""

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100

# Default output root: the folder this script lives in (the repo's dataset/).
DEFAULT_OUT = Path(__file__).resolve().parent

# Numeric codes mixed into the per-file seeds so the splits never share a stream.
_SPLIT_CODES = {'train': 1, 'test': 2, 'examples': 3}


########################## small signal helpers ##########################

def _time_axis(n):
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def _fade_envelope(length, fade):
    """Rectangle of `length` samples with raised-cosine edges of `fade` samples."""
    env = np.ones(length)
    fade = int(min(fade, length // 2))
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        env[:fade] = ramp
        env[length - fade:] = ramp[::-1]
    return env


def _gate(n, rng, on_range, off_range, fade_s=0.004):
    """An on/off envelope of length n with random on and off durations (seconds).

    The first event starts within the first off-period, so the whole file is
    covered by events from (almost) the start to the end.
    """
    env = np.zeros(n)
    pos = int(rng.uniform(0.0, off_range[1]) * SAMPLE_RATE)
    fade = int(fade_s * SAMPLE_RATE)
    while pos < n:
        on = max(int(rng.uniform(*on_range) * SAMPLE_RATE), 2 * fade + 1)
        end = min(pos + on, n)
        env[pos:end] = _fade_envelope(on, fade)[:end - pos]
        pos = end + int(rng.uniform(*off_range) * SAMPLE_RATE)
    return env


def _bandpass_noise(n, rng, lo_hz, hi_hz):
    """White noise restricted to [lo_hz, hi_hz] with soft spectral edges."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    edge = 0.1 * (hi_hz - lo_hz) + 50.0
    mask = np.clip((freqs - lo_hz) / edge + 1.0, 0.0, 1.0) * \
        np.clip((hi_hz - freqs) / edge + 1.0, 0.0, 1.0)
    return np.fft.irfft(spec * mask, n)


########################## the sound classes ##########################

def make_siren(n, rng):
    """Tone with a continuous periodic pitch sweep (sine, triangle or rising saw)."""
    t = _time_axis(n)
    centre = rng.uniform(2000.0, 6000.0)
    depth = rng.uniform(0.3, 0.5) * centre
    rate = rng.uniform(0.4, 2.5)  # sweeps per second
    phase0 = rng.uniform(0.0, 1.0)
    cycle = (rate * t + phase0) % 1.0
    shape = rng.integers(3)
    if shape == 0:
        mod = np.sin(2 * np.pi * cycle)
    elif shape == 1:
        mod = 4.0 * np.abs(cycle - 0.5) - 1.0
    else:
        mod = 2.0 * cycle - 1.0
    freq = centre + depth * mod
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    sig = np.sin(phase)
    for harmonic in (2, 3):
        if rng.random() < 0.6:
            sig += rng.uniform(0.1, 0.35) * np.sin(harmonic * phase)
    return sig


def make_beeps(n, rng):
    """Steady-pitch tone beeps with gaps; sometimes alternating between two pitches."""
    t = _time_axis(n)
    f1 = rng.uniform(1500.0, 9000.0)
    f2 = f1 * rng.choice([1.0, rng.uniform(1.25, 1.6)])
    beep_len = rng.uniform(0.08, 0.25)
    duty = rng.uniform(0.3, 0.6)
    period = beep_len / duty
    start = rng.uniform(0.0, period)
    idx = np.floor((t - start) / period)
    within = (t - start) - idx * period
    on = (within >= 0) & (within < beep_len)
    # Smooth the beep edges (5 ms) to keep the spectrum clean.
    fade = 0.005
    env = np.clip(np.minimum(within, beep_len - within) / fade, 0.0, 1.0) * on
    freq = np.where(idx.astype(np.int64) % 2 == 0, f1, f2)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return env * np.sin(phase)


def make_noise_bursts(n, rng):
    """Bursts of band-limited noise in one random band, at random intervals."""
    centre = rng.uniform(3500.0, 13000.0)
    width = rng.uniform(2000.0, 5000.0)
    lo = max(1500.0, centre - width / 2)
    hi = min(16500.0, centre + width / 2)
    noise = _bandpass_noise(n, rng, lo, hi)
    env = _gate(n, rng, on_range=(0.12, 0.4), off_range=(0.06, 0.3), fade_s=0.01)
    return noise * env


def make_clicks(n, rng):
    """Short broadband clicks (decaying noise blips) at a jittered rate."""
    rate = rng.uniform(3.0, 10.0)
    jitter = rng.uniform(0.0, 0.3)
    tau = rng.uniform(0.0002, 0.0008)  # decay time of one click, seconds
    click_len = int(8 * tau * SAMPLE_RATE) + 1
    decay = np.exp(-np.arange(click_len) / (tau * SAMPLE_RATE))
    sig = np.zeros(n + click_len)
    pos = rng.uniform(0.0, 1.0 / rate)
    while pos * SAMPLE_RATE < n:
        i = int(pos * SAMPLE_RATE)
        amp = rng.uniform(0.6, 1.0)
        sig[i:i + click_len] += amp * decay * rng.standard_normal(click_len)
        pos += (1.0 / rate) * (1.0 + rng.uniform(-jitter, jitter))
    return sig[:n]


def make_hum(n, rng):
    """Continuous harmonic stack on a low fundamental with slow wobble."""
    t = _time_axis(n)
    f0 = rng.uniform(50.0, 180.0)
    vib = 1.0 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 * vib) / SAMPLE_RATE
    rolloff = rng.uniform(0.6, 1.2)
    n_harm = int(2500.0 // f0)
    # One period of the waveform as a lookup table (much faster than summing
    # every harmonic over the whole file), read out along the running phase.
    grid = np.linspace(0.0, 2 * np.pi, 8193)
    table = np.zeros_like(grid)
    for k in range(1, n_harm + 1):
        table += k ** -rolloff * np.sin(k * grid + rng.uniform(0, 2 * np.pi))
    sig = np.interp(np.mod(phase, 2 * np.pi), grid, table)
    tremolo = 1.0 + rng.uniform(0.0, 0.2) * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    return sig * tremolo


# Class name -> generator. Order is fixed (it feeds the seeds); names are sorted.
CLASSES = {
    'beeps': make_beeps,
    'clicks': make_clicks,
    'hum': make_hum,
    'noise_bursts': make_noise_bursts,
    'siren': make_siren,
}


########################## file assembly ##########################

def synthesize(class_name, seconds, seed, split, class_idx, file_idx):
    """Return the int16 samples of one file; depends only on the arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], class_idx, file_idx])
    n = int(round(seconds * SAMPLE_RATE))
    sig = CLASSES[class_name](n, rng)
    sig = sig / max(np.max(np.abs(sig)), 1e-12)
    # Quiet background hiss so no window is ever digitally silent.
    sig = sig + rng.uniform(0.002, 0.008) * rng.standard_normal(n)
    peak = rng.uniform(0.3, 0.9)
    sig = sig * (peak / np.max(np.abs(sig)))
    return np.round(sig * 32767.0).astype(np.int16)


def write_wav(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, SAMPLE_RATE, subtype='PCM_16', format='WAV')


def generate(out, n_train, n_test, seconds, seed, examples=True, example_seconds=6.0):
    """Write the whole dataset below `out`; return a dict split -> file count."""
    counts = {'train': 0, 'test': 0, 'examples': 0}
    for class_idx, name in enumerate(CLASSES):
        for split, count, folder in (('train', n_train, out / 'train' / 'wav' / name),
                                     ('test', n_test, out / 'test' / name)):
            for i in range(count):
                samples = synthesize(name, seconds, seed, split, class_idx, i)
                write_wav(folder / '{}_{:03d}.wav'.format(name, i), samples)
                counts[split] += 1
        if examples:
            samples = synthesize(name, example_seconds, seed, 'examples', class_idx, 0)
            write_wav(out / 'examples' / '{}_example.wav'.format(name), samples)
            counts['examples'] += 1
    return counts


def write_folds_csv(out, classes, n_train, n_test, folds):
    """List every train and test file in out/folds.csv (file,label,fold), the generic format of
    dataset.folds; each class's files take the folds in turn, so every fold holds every class."""
    rows = ['file,label,fold']
    for name in classes:
        files = ['train/wav/{0}/{0}_{1:03d}.wav'.format(name, i) for i in range(n_train)]
        files += ['test/{0}/{0}_{1:03d}.wav'.format(name, i) for i in range(n_test)]
        rows += ['{},{},{}'.format(f, name, i % folds + 1) for i, f in enumerate(files)]
    path = out / 'folds.csv'
    path.write_text('\n'.join(rows) + '\n')
    return path
########################## background class and annotated scenes ##########################

# The class of recordings without events; its per-file seeds use the next class index
BACKGROUND = 'background'
_BACKGROUND_IDX = len(CLASSES)
_SCENES_CODE = 4  # mixed into the scene seeds, beside _SPLIT_CODES
# Scene events: length range in seconds (before trimming to the audible part), and the
# chance that the next event starts while the current one still sounds (polyphony)
SCENE_EVENT_SECONDS = (1.0, 4.0)
SCENE_OVERLAP_PROB = 0.25
SCENE_GAP_SECONDS = (0.5, 4.0)


def _coloured_noise(n, rng, exponent):
    """Unit-RMS noise whose power falls as 1 / f**exponent (above 20 Hz; no DC)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
    spec *= freqs ** (-exponent / 2)
    spec[0] = 0.0
    sig = np.fft.irfft(spec, n)
    return sig / max(np.sqrt(np.mean(sig ** 2)), 1e-12)


def make_background(n, rng):
    """Stationary coloured noise whose colour and level drift slowly, over a faint rumble.

    No onsets, tones, harmonics or gaps: nothing of the five event classes.
    """
    t = _time_axis(n)
    bright = _coloured_noise(n, rng, rng.uniform(0.0, 0.5))  # white to pinkish
    dark = _coloured_noise(n, rng, rng.uniform(0.8, 1.4))  # pink and darker
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 2 * np.pi))
    level_db = rng.uniform(2.0, 4.0) * np.sin(2 * np.pi * rng.uniform(0.03, 0.15) * t
                                              + rng.uniform(0, 2 * np.pi))
    rumble = _bandpass_noise(n, rng, 20.0, 120.0)
    rumble *= rng.uniform(0.1, 0.3) / max(np.sqrt(np.mean(rumble ** 2)), 1e-12)
    return (np.sqrt(1 - mix) * bright + np.sqrt(mix) * dark) * 10 ** (level_db / 20) + rumble


def generate_background(out, n_train, n_test, seconds, seed):
    """Write the background class: train/wav/background/ and test/background/; return the counts."""
    counts = {'train': n_train, 'test': n_test}
    for split, folder in (('train', out / 'train' / 'wav' / BACKGROUND), ('test', out / 'test' / BACKGROUND)):
        for i in range(counts[split]):
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], _BACKGROUND_IDX, i])
            sig = make_background(int(round(seconds * SAMPLE_RATE)), rng)
            sig *= rng.uniform(0.3, 0.9) / np.max(np.abs(sig))
            samples = np.round(sig * 32767.0).astype(np.int16)
            write_wav(folder / '{}_{:03d}.wav'.format(BACKGROUND, i), samples)
    return counts


def _scene_event(label, rng):
    """One event of a class, faded in and out, then trimmed to where it sounds (over 5 % of its peak)."""
    sig = CLASSES[label](int(rng.uniform(*SCENE_EVENT_SECONDS) * SAMPLE_RATE), rng)
    sig *= _fade_envelope(len(sig), int(0.01 * SAMPLE_RATE))
    loud = np.flatnonzero(np.abs(sig) > 0.05 * np.max(np.abs(sig)))
    return sig[loud[0]:loud[-1] + 1]  # the annotation is exactly where the event sounds


def scene_parts(seconds, seed, index, ebr_db):
    """A scene's background and events: (background, [(start sample, samples, label)]).

    Each event's RMS over its own span is ebr_db above the background's RMS over
    the same span (the event-to-background ratio). With SCENE_OVERLAP_PROB the
    next event, of another class, starts inside the current one (at most two
    events sound at once); otherwise it follows after a gap.
    """
    rng = np.random.default_rng([seed, _SCENES_CODE, index])
    n = int(round(seconds * SAMPLE_RATE))
    background = make_background(n, rng)
    events, end = [], rng.uniform(*SCENE_GAP_SECONDS)
    t, sounding = end, None  # next onset, and the class it overlaps (None: it follows a gap)
    while True:
        label = rng.choice(sorted(set(CLASSES) - {sounding}))
        sig = _scene_event(label, rng)
        start = int(t * SAMPLE_RATE)
        if start + len(sig) > n - int(0.5 * SAMPLE_RATE):
            return background, events
        span = background[start:start + len(sig)]
        sig *= np.sqrt(np.mean(span ** 2) / np.mean(sig ** 2)) * 10 ** (ebr_db / 20)
        events.append((start, sig, str(label)))
        end = max(end, (start + len(sig)) / SAMPLE_RATE)
        if sounding is None and rng.random() < SCENE_OVERLAP_PROB:
            length = len(sig) / SAMPLE_RATE
            t, sounding = rng.uniform(t + 0.25 * length, t + 0.75 * length), label
        else:
            t, sounding = end + rng.uniform(*SCENE_GAP_SECONDS), None


def mix_scene(background, events, peak=0.8):
    """int16 samples of background + events, scaled to the given peak."""
    mix = background.copy()
    for start, sig, _ in events:
        mix[start:start + len(sig)] += sig
    return np.round(mix * (peak / np.max(np.abs(mix))) * 32767.0).astype(np.int16)


def scene_name(index, ebr_db):
    return 'scene_{:02d}_ebr{:+g}'.format(index, ebr_db)


def generate_scenes(out, count, seconds, seed, ebrs):
    """Write scenes/wav/<name>.wav and scenes/annotations/<name>.txt (DCASE: onset, offset, label).

    Scene i has the event-to-background ratio ebrs[i % len(ebrs)] dB. Returns the count.
    """
    for i in range(count):
        ebr = ebrs[i % len(ebrs)]
        background, events = scene_parts(seconds, seed, i, ebr)
        write_wav(out / 'scenes' / 'wav' / (scene_name(i, ebr) + '.wav'), mix_scene(background, events))
        lines = ['{:.6f}\t{:.6f}\t{}\n'.format(start / SAMPLE_RATE, (start + len(sig)) / SAMPLE_RATE, label)
                 for start, sig, label in sorted(events, key=lambda e: e[0])]
        path = out / 'scenes' / 'annotations' / (scene_name(i, ebr) + '.txt')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(''.join(lines))
    return count


def build_parser():
    parser = argparse.ArgumentParser(
        description='Write a small deterministic synthetic acoustic-event dataset '
                    '(classes: {}).'.format(', '.join(CLASSES)))
    parser.add_argument('--out', default=None,
                        help='output root (default: the folder of this script, '
                             'i.e. the repository\'s dataset/)')
    parser.add_argument('--train', type=int, default=24,
                        help='files per class in train/wav/<class>/ (default 24)')
    parser.add_argument('--test', type=int, default=8,
                        help='files per class in test/<class>/ (default 8)')
    parser.add_argument('--seconds', type=float, default=4.0,
                        help='length of each train/test file in seconds (default 4)')
    parser.add_argument('--example-seconds', type=float, default=6.0,
                        help='length of each examples/ file in seconds (default 6)')
    parser.add_argument('--seed', type=int, default=1337, help='random seed (default 1337)')
    parser.add_argument('--no-examples', action='store_true',
                        help='do not write the examples/ folder')
    parser.add_argument('--folds', type=int, default=None, metavar='K',
                        help='also write folds.csv: every train and test file with a fold '
                             'from 1 to K, for crossval.sh (default: none)')
    parser.add_argument('--no-background', action='store_true',
                        help='do not write the background class')
    parser.add_argument('--scenes', type=int, default=3,
                        help='annotated scenes in scenes/ (default 3; 0 = none)')
    parser.add_argument('--scene-seconds', type=float, default=60.0,
                        help='length of each scene in seconds (default 60)')
    parser.add_argument('--ebrs', type=float, nargs='+', default=[-6.0, 0.0, 6.0], metavar='DB',
                        help='event-to-background ratios of the scenes, in turn (default -6 0 6)')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train < 0 or args.test < 0:
        parser.error('--train and --test must be >= 0')
    if args.seconds < 1.0 or args.example_seconds < 1.0:
        parser.error('--seconds and --example-seconds must be at least 1 '
                     '(AED_spec.py drops chunks shorter than 1 s)')
    if args.seed < 0:
        parser.error('--seed must be >= 0')
    if args.folds is not None and not 2 <= args.folds <= args.train + args.test:
        parser.error('--folds must be from 2 to --train + --test (every fold needs a file per class)')
    if args.scenes < 0 or args.scene_seconds < 6.0 or not np.all(np.isfinite(args.ebrs)):
        parser.error('--scenes must be >= 0, --scene-seconds at least 6 and --ebrs finite numbers')

    out = Path(args.out).resolve() if args.out is not None else DEFAULT_OUT
    counts = generate(out, args.train, args.test, args.seconds, args.seed,
                      examples=not args.no_examples,
                      example_seconds=args.example_seconds)
    if not args.no_background:
        for split, n in generate_background(out, args.train, args.test, args.seconds, args.seed).items():
            counts[split] += n
    counts['scenes'] = generate_scenes(out, args.scenes, args.scene_seconds, args.seed, args.ebrs)
    print('make_demo: wrote {} files ({} train, {} test, {} examples, {} scenes; {} classes) under {}'
          .format(sum(counts.values()), counts['train'], counts['test'], counts['examples'],
                  counts['scenes'], len(CLASSES) + (not args.no_background), out))
    if args.folds:
        classes = list(CLASSES) + ([] if args.no_background else [BACKGROUND])
        path = write_folds_csv(out, classes, args.train, args.test, args.folds)
        print('make_demo: wrote {} ({} folds)'.format(path, args.folds))
    return counts


if __name__ == '__main__':
    main()
