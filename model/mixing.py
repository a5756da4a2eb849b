"""Background mixing (issue 15): an event's spectrogram window laid onto a background window.

EBR (event-to-background ratio) here: 20 log10 of the event image's RMS over its
span (from its first to its last column that is not all zero) over the
background image's RMS over the same columns. The images are linear magnitude
spectrograms, so by Parseval this is the audio EBR of dataset/make_demo.py's
scenes (0.5 dB below it on demo clips, sd 0.4 dB). The magnitudes add as powers,
the expected magnitude of two independent signals. AED_spec scaled each window
to a peak of 1 before it was resized, so the mix is divided by the larger of the
scaled peaks (gain and 1) and its own maximum, not by its resized maximum alone:
at 128x64 that is 8x closer to the spectrogram of the audio mix, and it trained
a detector with segment F1 0.73 instead of 0.49 (bench/README.md).

The background-only rule: a mixed window holds the event, at the drawn EBR over
the event's own span, so it keeps the event's label truly. A silent event image
is never mixed, and a partial span that holds little of the event (under half
its RMS: the quiet part of a clip) falls back to the whole window. The caller
never mixes images of background classes; they keep their label.

    plan = draw_mix(rng, prob=0.5, ebr_db=(-6, 6), n_backgrounds=len(backgrounds), partial=0.5)
    if plan is not None:
        img = mix_background(img, read(backgrounds[plan[0]]), plan[1], plan[2])
"""
import numpy as np

# A partial event fills at least this share of the window (0.5 s of a 3 s window)
MIN_SPAN = 1 / 6


def event_span(img):
    """(first, stop) columns (time frames) of a (C, H, W) image's event: from its first to its
    last column that is not all zero (quiet frames inside may be all zero in 8 bits); (0, 0) if none."""
    sounding = np.flatnonzero(img.any(axis=(0, 1)))
    return (int(sounding[0]), int(sounding[-1]) + 1) if sounding.size else (0, 0)


def _rms(img, first, stop):
    part = img[..., first:stop]  # a view
    return float(np.sqrt(np.vdot(part, part) / part.size)) if part.size else 0.0


def keep_span(img, span):
    """img with the columns outside span, (start, stop) fractions of its width, set to zero.

    Returns img itself when the event has nothing in the span, or under half the
    RMS it has over its own span: that part of the clip is not the event.
    """
    width = img.shape[-1]
    start = min(int(span[0] * width), width - 1)
    stop = max(start + 1, int(round(span[1] * width)))
    first, end = event_span(img)
    lo, hi = max(first, start), min(end, stop)  # the event's columns inside the span
    if lo >= hi or _rms(img, lo, hi) < 0.5 * _rms(img, first, end):
        return img
    part = np.zeros_like(img)
    part[..., start:stop] = img[..., start:stop]
    return part


def mix_background(img, background, ebr_db, span=None):
    """The event image img laid onto background at ebr_db dB: float32 (C, H, W) in [0, 1].

    img and background are (C, H, W) float32 in [0, 1] of the same shape; span
    (see keep_span) keeps the event in part of the window only. Returns img
    itself when it is silent, or the background is silent over img's span.
    """
    if span is not None:
        img = keep_span(img, span)
    first, stop = event_span(img)
    b_rms = _rms(background, first, stop)
    if not b_rms > 0:  # a silent event (no span) or a silent background
        return img
    gain = 10 ** (ebr_db / 20) * b_rms / _rms(img, first, stop)
    # in place, in float32: 2.5x faster than the plain expression at 512x256
    out = np.multiply(img, np.float32(gain))
    out *= out
    out += np.square(background)
    np.sqrt(out, out=out)
    # the scaled peaks are gain and 1 at full resolution (a resized image's maximum is lower)
    out /= np.float32(max(gain, 1.0, float(out.max())))
    return out


def draw_mix(rng, prob, ebr_db, n_backgrounds, partial=0.0):
    """(background index, EBR in dB, span or None) for one event item, or None (probability 1 - prob).

    rng: a numpy Generator; ebr_db: (low, high), the EBR is uniform in it. With
    probability `partial` the event keeps a span of the window (start, stop as
    fractions of its width), at least MIN_SPAN wide, anywhere in it; else span
    is None (the whole window). Always draws the same numbers, so the stream
    does not depend on the outcome.
    """
    mix, index, ebr = rng.random(), rng.integers(max(n_backgrounds, 1)), rng.uniform(*ebr_db)
    part, width, where = rng.random(), rng.uniform(MIN_SPAN, 1.0), rng.random()
    if mix >= prob or n_backgrounds < 1:
        return None
    start = where * (1.0 - width)
    return int(index), float(ebr), (start, start + width) if part < partial else None


__all__ = ['MIN_SPAN', 'draw_mix', 'event_span', 'keep_span', 'mix_background']
