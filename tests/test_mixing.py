"""Background mixing of spectrogram images (model/mixing.py) against mixing the audio."""
import cv2
import numpy as np
import pytest

from model.audio import spectrograms
from model.mixing import MIN_SPAN, draw_mix, event_span, keep_span, mix_background

RATE = 44100


def image(sig):
    """A 3 s signal as training reads it: AED_spec's PNG levels resized to 128x64 -> (1, 64, 128)."""
    specs, _ = spectrograms(sig.astype(np.float32), [(0, len(sig))], RATE, 3, uint8=True)
    return cv2.resize(specs[0], (128, 64))[None].astype(np.float32) / 255


def rms(x):
    return np.sqrt(np.mean(np.square(x, dtype=np.float64)))


@pytest.fixture(scope='module')
def clips():
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    # a tone sweeping 2-4 kHz that beeps on and off, and white noise over a 90 Hz hum
    event = np.sin(2 * np.pi * (3000 + 1000 * np.sin(2 * np.pi * 0.7 * t)) * t) * (np.sin(9 * t) > -0.3)
    return event, rng.standard_normal(len(t)) + 0.5 * np.sin(2 * np.pi * 90 * t)


@pytest.mark.parametrize('ebr', [-6.0, 0.0, 6.0])
def test_image_mix_matches_the_spectrogram_of_the_audio_mix(clips, ebr):
    event, noise = clips
    audio_mix = image(event * rms(noise) / rms(event) * 10 ** (ebr / 20) + noise)
    mixed = mix_background(image(event), image(noise), ebr)
    assert mixed.dtype == np.float32 and mixed.shape == (1, 64, 128)
    assert 0.0 <= mixed.min() and mixed.max() <= 1.0
    error = np.abs(mixed - audio_mix).mean()
    assert error < 0.15 * audio_mix.mean()
    # 10 dB off is clearly worse, and so is renormalising to the resized image's own maximum
    for wrong in (ebr - 10, ebr + 10):
        assert np.abs(mix_background(image(event), image(noise), wrong) - audio_mix).mean() > 3 * error
    assert np.abs(mixed / mixed.max() - audio_mix).mean() > 3 * error


def test_ebr_is_measured_over_the_event_columns_only():
    rng = np.random.default_rng(1)
    column = rng.uniform(0, 1, (1, 64, 1)).astype(np.float32)
    event = np.repeat(column, 128, axis=2)  # (1, 64, 128), the same spectrum in every frame
    event /= event.max()
    padded = event.copy()
    padded[..., 40:] = 0  # a window cut at the end of its file: zero columns on the right
    background = np.repeat(rng.uniform(0, 0.5, (1, 64, 1)), 128, axis=2).astype(np.float32)
    background[0, 0] = 1.0  # stationary too: its RMS over any columns is the same
    assert event_span(padded) == (0, 40)
    full, part = mix_background(event, background, 3.0), mix_background(padded, background, 3.0)
    # the same EBR over the event's own span gives the same pixels there ...
    np.testing.assert_allclose(part[..., :40], full[..., :40], atol=1e-6)
    # ... and the background alone after it (scaled as the whole mix is)
    scale = part[..., 40:] / background[..., 40:]
    assert np.ptp(scale) < 1e-5 and 0.5 < scale.max() <= 1


def test_silent_images_are_not_mixed():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (1, 16, 32)).astype(np.float32)
    silent = np.zeros_like(img)
    # an event window without energy stays silent: it never becomes a background-only
    # window that carries the event's label
    assert mix_background(silent, img, 0.0) is silent
    assert mix_background(img, silent, 0.0) is img


def test_a_quiet_event_is_under_the_background():
    rng = np.random.default_rng(3)
    event = np.zeros((1, 32, 64), dtype=np.float32)
    event[0, 10] = 1.0  # a tone in row 10
    background = rng.uniform(0.2, 0.4, (1, 32, 64)).astype(np.float32)
    loud, quiet = mix_background(event, background, 6.0), mix_background(event, background, -6.0)
    # the tone stands out by its EBR; the rest of the window is the background, scaled by the peak
    assert loud[0, 10].mean() > quiet[0, 10].mean() > background[0, 11:].mean()
    np.testing.assert_allclose(quiet[0, 11:], background[0, 11:], atol=1e-6)
    assert loud.max() <= 1.0


def test_draw_mix():
    plans = [draw_mix(np.random.default_rng([5, k]), 0.3, (-6, 6), 4) for k in range(2000)]
    mixed = [p for p in plans if p is not None]
    assert 0.25 < len(mixed) / len(plans) < 0.35
    assert {i for i, _, _ in mixed} == {0, 1, 2, 3}
    ebrs = np.array([e for _, e, _ in mixed])
    assert -6 <= ebrs.min() < -5 and 5 < ebrs.max() <= 6
    assert draw_mix(np.random.default_rng(0), 1.0, (-6, 6), 0) is None  # no background to mix with
    assert all(draw_mix(np.random.default_rng(k), 0.0, (-6, 6), 4) is None for k in range(50))
    # the same seed, the same plan; and the stream moves on by the same draws either way
    same = [draw_mix(np.random.default_rng(9), 1.0, (0, 3), 5, partial=0.5) for _ in range(2)]
    assert same[0] == same[1]
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    draw_mix(a, 0.0, (-6, 6), 4), draw_mix(b, 1.0, (-6, 6), 4)
    assert a.random() == b.random()


def test_a_partial_event_keeps_its_span_at_the_drawn_ebr():
    rng = np.random.default_rng(4)
    event = np.repeat(rng.uniform(0.1, 1, (1, 32, 1)), 60, axis=2).astype(np.float32)
    background = np.repeat(rng.uniform(0.1, 0.5, (1, 32, 1)), 60, axis=2).astype(np.float32)
    part = keep_span(event, (0.25, 0.5))
    assert event_span(part) == (15, 30)
    mixed = mix_background(event, background, 0.0, span=(0.25, 0.5))
    # the event's columns are mixed at 0 dB over the span (as the whole window would be) ...
    whole = mix_background(event, background, 0.0)
    np.testing.assert_allclose(mixed[..., 15:30], whole[..., 15:30], atol=1e-6)
    # ... and the rest of the window holds the background alone
    np.testing.assert_allclose(mixed[..., :15], background[..., :15], atol=1e-6)
    np.testing.assert_allclose(mixed[..., 30:], background[..., 30:], atol=1e-6)


def test_a_span_without_the_event_falls_back_to_the_whole_window():
    # a clip whose event sounds in its first third; the rest is a faint noise floor
    event = np.full((1, 16, 90), 0.01, dtype=np.float32)
    event[..., :30] = 1.0
    assert keep_span(event, (0.5, 1.0)) is event  # quiet part only: not the event
    assert keep_span(event, (0.0, 0.4)) is not event
    padded = np.zeros((1, 16, 90), dtype=np.float32)
    padded[..., :20] = 0.5  # a window cut at the file's end, zero after column 20
    assert keep_span(padded, (0.5, 1.0)) is padded  # nothing of the event in the span
    # mixing never turns such a span into a background-only window with the event's label
    background = np.full_like(event, 0.3)
    mixed = mix_background(event, background, 0.0, span=(0.5, 1.0))
    assert mixed[..., :30].mean() > 1.5 * mixed[..., 30:].mean()


def test_draw_mix_spans():
    plans = [draw_mix(np.random.default_rng([6, k]), 1.0, (-6, 6), 3, partial=0.5) for k in range(2000)]
    spans = [p[2] for p in plans if p[2] is not None]
    assert 0.45 < len(spans) / len(plans) < 0.55
    widths = np.array([b - a for a, b in spans])
    assert all(0 <= a < b <= 1 for a, b in spans)
    assert MIN_SPAN <= widths.min() < MIN_SPAN + 0.01 and 0.99 < widths.max() <= 1
    starts = np.array([a for a, _ in spans])
    assert starts.min() < 0.01 and starts.max() > 0.7  # anywhere in the window
    assert all(draw_mix(np.random.default_rng(k), 1.0, (-6, 6), 3)[2] is None for k in range(50))


def test_quiet_frames_inside_the_event_count_in_its_span():
    # beeps: every other frame all zero (silent in 8 bits), then zero padding from column 50
    event = np.zeros((1, 8, 64), dtype=np.float32)
    event[..., 0:50:2] = 0.8
    background = np.full_like(event, 0.2)
    assert event_span(event) == (0, 49)
    mixed = mix_background(event, background, 0.0)
    peak = background[0, 0, 1] / mixed[0, 0, 1]  # a silent frame holds the background alone
    gain = np.sqrt((mixed[0, 0, 0] * peak) ** 2 - 0.2 ** 2) / 0.8
    # 0 dB over columns 0..48: RMS 0.8 * sqrt(25 / 49) against 0.2
    assert gain == pytest.approx(0.2 / (0.8 * np.sqrt(25 / 49)), rel=1e-4)
