"""Events from window probabilities, and the files they are written to.

A recording's windows (model.audio.split_bounds: `length` seconds each, `hop`
seconds apart, the last ones cut at the end of the file) each give every class
a probability. A class is active in a window when its probability, median
filtered over `smoothing` windows, reaches its threshold; a run of active
windows is one event. Several classes may be active at once, and background
classes are never events.

Placement (hop-centred). Window i stands for the `hop` seconds centred on its
centre, start_i + length / 2. These segments tile the file: the first window
also stands for the file's start and the last for its end, and every segment
is clipped to [0, duration]. A run of windows i..j is the event from the start
of window i's segment to the end of window j's. Events of one class at most
`merge_gap` seconds apart are merged, then events shorter than `min_length`
seconds (and any of zero length) are dropped. An event's confidence is the
highest smoothed probability of its class in its windows, so it is never below
the class's threshold.

Output formats: a Raven Pro selection table, an Audacity label track, CSV and
JSON lines, each written per recording, atomically.

    thresholds = parse_thresholds("{'default': 0.5, 'siren': 0.7}", classes)
    events = detect_events(probs, starts, 60.0, classes, thresholds, hop=1.0, length=3,
                           smoothing=3, min_length=0.5, merge_gap=1.0, background=['background'])
    write_atomic(output_path('rec.wav', 'raven', 'out'), events_text(events, 'raven', 'rec.wav', 22050))
"""
import ast
import csv
import io
import json
import numbers
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

# File name suffix of each output format (BirdNET-Analyzer's style: <recording stem><suffix>)
SUFFIXES = {'raven': '.selections.txt', 'audacity': '.labels.txt', 'csv': '.events.csv',
            'json': '.events.jsonl'}
RAVEN_HEADER = ['Selection', 'View', 'Channel', 'Begin Time (s)', 'End Time (s)', 'Low Freq (Hz)',
                'High Freq (Hz)', 'Class', 'Confidence']
CSV_HEADER = ['file', 'start', 'end', 'label', 'confidence']


class Event(NamedTuple):
    onset: float  # seconds
    offset: float  # seconds
    label: str
    confidence: float = None  # None for an annotated event


########################## thresholds ##########################

def _fraction(name, value):
    """value as a float in (0, 1), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f'{name}: {value!r} is not a number between 0 and 1 (exclusive)')
    return float(value)


def parse_thresholds(value, classes=None):
    """A threshold (number), a dict {'default': t, class: t, ...}, or their text -> dict.

    Returns {'default': t, class: t, ...}. Text is a number or a Python/JSON
    dict literal. Raises ValueError for a value outside (0, 1), a dict without
    'default' that does not name every class, or (when classes are given) a
    class the model does not have.
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())  # literals only: never runs code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f'threshold {value!r} is neither a number nor a dict literal') from None
    if not isinstance(value, dict):
        return {'default': _fraction('threshold', value)}
    out = {str(k): _fraction(f'threshold {k!r}', v) for k, v in value.items()}
    if classes is not None:
        unknown = sorted(set(out) - set(classes) - {'default'})
        if unknown:
            raise ValueError(f"threshold for unknown class(es) {', '.join(unknown)} "
                             f"(the model's classes: {', '.join(classes)})")
        if 'default' not in out and set(classes) - set(out):
            raise ValueError("threshold dict has no 'default' and leaves classes without one: "
                             + ', '.join(sorted(set(classes) - set(out))))
    elif 'default' not in out:
        raise ValueError("threshold dict needs a 'default' value")
    return out


def threshold_vector(thresholds, classes):
    """(C,) thresholds in class order from a number or a parse_thresholds dict."""
    table = parse_thresholds(thresholds, classes)
    return np.array([table.get(c, table.get('default')) for c in classes], dtype=np.float64)


def thresholds_path(model_path):
    """The tuned-thresholds file of a checkpoint: AED_x_model_best.pt -> AED_x_model_best.thresholds.json"""
    path = Path(model_path)
    return path.with_name(path.stem + '.thresholds.json')


def save_thresholds(path, thresholds, info=None):
    """Write {'thresholds': {...}, **info} as JSON, atomically; returns the path."""
    parse_thresholds(thresholds)
    write_atomic(path, json.dumps({'thresholds': thresholds, **(info or {})}, indent=1) + '\n')
    return Path(path)


def load_thresholds(path, classes=None):
    """The thresholds dict stored by save_thresholds, or None when there is no such file.

    Raises ValueError naming the file when it is unreadable or its thresholds are not valid.
    """
    try:
        data = json.loads(Path(path).read_text(encoding='utf-8'))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: cannot read tuned thresholds ({e})') from None
    if not isinstance(data, dict) or not isinstance(data.get('thresholds'), dict):
        raise ValueError(f"{path}: no 'thresholds' dict in it")
    try:
        return parse_thresholds(data['thresholds'], classes)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None


########################## detection ##########################

def smooth(probs, smoothing):
    """Median filter of each class's probabilities over `smoothing` windows (odd; 1 = off).

    At the ends the first and last windows are repeated (scipy's 'nearest'). The values are
    scipy.ndimage.median_filter's; numpy's median over a sliding view spares its import, 0.15 s
    after torch's: 10 % of an AED_test.py --events run on 20 windows of the paper's network.
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, np.integer)) \
            or smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f'smoothing must be an odd whole number of windows >= 1, not {smoothing!r}')
    probs = np.asarray(probs)
    if smoothing == 1 or len(probs) < 2:
        return probs
    padded = np.pad(probs, ((smoothing // 2, smoothing // 2), (0, 0)), mode='edge')
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, smoothing, axis=0), axis=-1)


def runs(active):
    """(first, last) window indices of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate(([0], np.asarray(active, dtype=np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1


def place(first, last, starts, hop, length, duration):
    """Onset and offset (seconds) of runs of windows first..last: the hop-centred placement.

    Window i stands for [c_i - hop/2, c_i + hop/2], c_i = starts[i] + length/2;
    the first window's segment starts at 0, the last's ends at `duration`, all
    clipped to [0, duration].
    """
    centres = np.asarray(starts, dtype=np.float64) + length / 2
    lo, hi = centres - hop / 2, centres + hop / 2
    lo[0], hi[-1] = 0.0, duration
    return np.clip(lo[first], 0.0, duration), np.clip(hi[last], 0.0, duration)


def merge_events(events, gap):
    """Merge one class's events (sorted by onset) that are at most `gap` seconds apart."""
    merged = []
    for ev in events:
        if merged and ev.onset - merged[-1].offset <= gap:
            prev = merged[-1]
            merged[-1] = prev._replace(offset=max(prev.offset, ev.offset),
                                       confidence=max(prev.confidence, ev.confidence))
        else:
            merged.append(ev)
    return merged


def detect_events(probs, starts, duration, classes, thresholds, hop, length, smoothing=1,
                  min_length=0.0, merge_gap=0.0, background=()):
    """Events of one recording from its window probabilities (see the module docstring).

    probs (W, C) per window and class; starts (W,) window starts in seconds;
    duration of the recording in seconds; thresholds a number or a
    parse_thresholds dict. Returns [Event] sorted by onset, then label.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(starts) != len(probs):
        raise ValueError(f'probs {probs.shape} does not match {len(starts)} windows x {len(classes)} classes')
    if len(probs) == 0:
        return []
    smoothed = smooth(probs, smoothing)
    limits = threshold_vector(thresholds, classes)
    events = []
    for k, label in enumerate(classes):
        if label in background:
            continue
        first, last = runs(smoothed[:, k] >= limits[k])
        onsets, offsets = place(first, last, starts, hop, length, duration)
        found = [Event(float(a), float(b), label, float(smoothed[i:j + 1, k].max()))
                 for a, b, i, j in zip(onsets, offsets, first, last)]
        events += [ev for ev in merge_events(found, merge_gap)
                   if ev.offset > ev.onset and ev.offset - ev.onset >= min_length]
    return sorted(events, key=lambda ev: (ev.onset, ev.label))


########################## output files ##########################

def output_path(recording, fmt, out_dir, root=None):
    """Where --out DIR puts a recording's events: DIR/<stem><suffix>.

    With `root` (the folder the recording was found in), its sub-folders are
    kept below DIR, so equal names in different folders do not collide.
    """
    recording = Path(recording)
    sub = recording.parent.relative_to(root) if root is not None else Path()
    return Path(out_dir) / sub / (recording.stem + SUFFIXES[fmt])


def events_text(events, fmt, recording='', high_freq=22050, header=True):
    """One recording's events as text in fmt: 'raven', 'audacity', 'csv' or 'json' (lines).

    high_freq is the Raven box's top, the Nyquist frequency of the analysis
    rate. header=False leaves out the CSV header (to append more recordings).
    """
    buf = io.StringIO()
    if fmt == 'raven':
        buf.write('\t'.join(RAVEN_HEADER) + '\n')
        for n, ev in enumerate(events, 1):
            buf.write(f'{n}\tSpectrogram 1\t1\t{ev.onset:.3f}\t{ev.offset:.3f}\t0\t{high_freq:g}'
                      f'\t{ev.label}\t{ev.confidence:.4f}\n')
    elif fmt == 'audacity':
        for ev in events:
            buf.write(f'{ev.onset:.3f}\t{ev.offset:.3f}\t{ev.label}\n')
    elif fmt == 'csv':
        writer = csv.writer(buf, lineterminator='\n')
        if header:
            writer.writerow(CSV_HEADER)
        writer.writerows([str(recording), f'{ev.onset:.3f}', f'{ev.offset:.3f}', ev.label,
                          f'{ev.confidence:.4f}'] for ev in events)
    elif fmt == 'json':
        for ev in events:
            buf.write(json.dumps({'file': str(recording), 'start': round(ev.onset, 3),
                                  'end': round(ev.offset, 3), 'label': ev.label,
                                  'confidence': round(ev.confidence, 4)}) + '\n')
    else:
        raise ValueError(f"unknown events format {fmt!r} (use {', '.join(SUFFIXES)})")
    return buf.getvalue()


def write_atomic(path, text):
    """Write text to path through a temporary file and os.replace: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        tmp.write_text(text, encoding='utf-8')
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_events(text, fmt):
    """Parse events_text output back into [Event] (the Raven table by its header)."""
    lines = text.splitlines()
    if fmt == 'raven':
        rows = csv.DictReader(lines, delimiter='\t')
        return [Event(float(r['Begin Time (s)']), float(r['End Time (s)']), r['Class'],
                      float(r['Confidence'])) for r in rows]
    if fmt == 'audacity':
        parts = [line.split('\t') for line in lines if line.strip()]
        return [Event(float(a), float(b), label) for a, b, label in parts]
    if fmt == 'csv':
        rows = csv.DictReader(lines)
        return [Event(float(r['start']), float(r['end']), r['label'], float(r['confidence'])) for r in rows]
    if fmt == 'json':
        rows = [json.loads(line) for line in lines if line.strip()]
        return [Event(r['start'], r['end'], r['label'], r['confidence']) for r in rows]
    raise ValueError(f"unknown events format {fmt!r} (use {', '.join(SUFFIXES)})")


__all__ = ['CSV_HEADER', 'Event', 'RAVEN_HEADER', 'SUFFIXES', 'detect_events', 'events_text',
           'load_thresholds', 'merge_events', 'output_path', 'parse_thresholds', 'place',
           'read_events', 'runs', 'save_thresholds', 'smooth', 'threshold_vector', 'thresholds_path',
           'write_atomic']
