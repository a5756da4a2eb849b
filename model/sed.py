"""Annotated recordings: reading annotation files, and scores computed by sed_eval.

Annotation files hold one recording's events, in one of two formats:

- DCASE: one event a line, `onset<TAB>offset<TAB>label` in seconds. Fields may
  also be separated by commas or, in a line without tabs or commas, by spaces
  (the label is then the rest of the line). Leading fields before the onset
  (a file name, a scene label) and, with tabs or commas, fields after the
  label are ignored, as in the TUT-SED and DESED files. Blank lines are
  skipped, and so is a first line that is a header (it names 'onset' or
  'start' or 'begin' and has no number).
- Raven Pro selection table, recognised by its header line starting with
  `Selection<TAB>`: Begin Time (s), End Time (s) and the label from the
  column Class, Annotation or Label; a selection shown in several views is
  one event.

A recording's annotation file sits in one folder, named after its stem:
`<stem>.txt`, `<stem>.tsv`, `<stem>.csv`, `<stem>.ann` or `<stem>.*selections.txt`.

Metrics are sed_eval's (the DCASE reference toolbox): segment-based and
event-based precision, recall, F1 and error rate, overall (micro-averaged
over segments or events) and per class. sed_eval takes a few tenths of a
second to import, so it is imported where it is used.

    refs, warnings = read_annotations(find_annotation('scene.wav', 'annotations'), duration=60.0)
    labels, unknown = label_list(classes, ['background'], {'scene.wav': refs})
    scores = evaluate({'scene.wav': refs}, {'scene.wav': events}, {'scene.wav': 60.0}, labels)
"""
import csv
import glob
import math
from pathlib import Path

import numpy as np

from model.events import Event, detect_events, parse_thresholds

# Annotation file names tried for a recording <stem>, in this order
ANNOTATION_PATTERNS = ['{}.txt', '{}.tsv', '{}.csv', '{}.ann', '{}.*selections.txt']
RAVEN_LABEL_COLUMNS = ['Class', 'Annotation', 'Label']
# Thresholds of the sweep, and the grid that tune_thresholds searches
SWEEP = tuple(round(0.1 * k, 1) for k in range(1, 10))
TUNE_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))
# Past the recording's end by more than this (seconds), a clipped event is warned about
END_TOLERANCE = 0.001


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file (and line)."""


########################## annotation files ##########################

def find_annotation(recording, folder):
    """The annotation file of a recording in folder; AnnotationError when none or several."""
    stem = glob.escape(Path(recording).stem)
    found = []
    for pattern in ANNOTATION_PATTERNS:
        found += [p for p in sorted(Path(folder).glob(pattern.format(stem)))
                  if p.is_file() and p not in found]
    if not found:
        raise AnnotationError(f'no annotation file for it in {folder} (looked for '
                              + ', '.join(p.format(Path(recording).stem) for p in ANNOTATION_PATTERNS) + ')')
    if len(found) > 1:
        raise AnnotationError('several annotation files for it: ' + ', '.join(p.name for p in found))
    return found[0]


def _number(text):
    """float(text) if it is a finite number, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_dcase_line(line):
    """(onset, offset, label) of one DCASE line, or a reason string when it is malformed."""
    sep = '\t' if '\t' in line else ',' if ',' in line else None
    fields = [f.strip() for f in line.split(sep)]
    for i in range(len(fields) - 2):
        onset, offset = _number(fields[i]), _number(fields[i + 1])
        label = ' '.join(fields[i + 2:]) if sep is None else fields[i + 2]
        if onset is not None and offset is not None and label and _number(label) is None:
            return onset, offset, label
    return 'expected onset, offset and label'


def _is_header(line):
    fields = line.replace(',', '\t').split('\t') if ('\t' in line or ',' in line) else line.split()
    named = any(word in line.lower() for word in ('onset', 'start', 'begin'))
    return named and all(_number(f) is None for f in fields)


def read_dcase(path, text):
    """[(line number, onset, offset, label)] of a DCASE annotation text; AnnotationError if malformed."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (n == 1 and _is_header(line)):
            continue
        parsed = parse_dcase_line(line.strip())
        if isinstance(parsed, str):
            raise AnnotationError(f'{path} line {n}: {parsed}: {line.strip()!r}')
        rows.append((n, *parsed))
    return rows


def read_raven(path, text):
    """[(line number, onset, offset, label)] of a Raven selection table; AnnotationError if malformed."""
    table = csv.DictReader(text.splitlines(), delimiter='\t')
    column = next((c for c in RAVEN_LABEL_COLUMNS if c in (table.fieldnames or [])), None)
    if column is None or not {'Begin Time (s)', 'End Time (s)'} <= set(table.fieldnames):
        raise AnnotationError(f'{path}: a Raven table needs Begin Time (s), End Time (s) and one of '
                              + ', '.join(RAVEN_LABEL_COLUMNS))
    rows, seen = [], set()
    for n, row in enumerate(table, 2):
        onset, offset = _number(row['Begin Time (s)'] or ''), _number(row['End Time (s)'] or '')
        label = (row[column] or '').strip()
        if onset is None or offset is None or not label:
            raise AnnotationError(f'{path} line {n}: expected begin time, end time and {column}')
        if (onset, offset, label) not in seen:  # not the same selection in another view
            rows.append((n, onset, offset, label))
            seen.add((onset, offset, label))
    return rows


def read_annotations(path, duration=None):
    """One recording's annotated events, and warnings: ([Event] sorted by onset, [str]).

    An empty file is a recording without events. Raises AnnotationError (file
    and line in its message) for an unreadable file, a malformed line, a
    negative onset or onset >= offset. Given the recording's duration, events
    past its end are clipped to it (or dropped when they start after it), with
    a warning.
    """
    try:
        text = Path(path).read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f'{path}: cannot read it ({e})') from None
    rows = read_raven(path, text) if text.startswith('Selection\t') else read_dcase(path, text)
    events, warnings = [], []
    for n, onset, offset, label in rows:
        if onset < 0 or onset >= offset:
            raise AnnotationError(f'{path} line {n}: onset {onset:g} must be >= 0 '
                                  f'and before offset {offset:g}')
        if duration is not None and offset > duration + END_TOLERANCE:
            kept = 'clipped to' if onset < duration else 'dropped: it starts after'
            warnings.append(f'{path} line {n}: event {onset:g}-{offset:g} s ({label}) ends past the '
                            f'recording, {kept} its end at {duration:g} s')
        if duration is None or onset < duration:
            events.append(Event(onset, offset if duration is None else min(offset, duration), label))
    return sorted(events, key=lambda ev: (ev.onset, ev.label)), warnings


########################## metrics ##########################

def label_list(classes, background, references):
    """The labels scored: the model's non-background classes, then annotation labels it does not know.

    Returns (labels, unknown); unknown labels can only be missed. Annotations
    labelled with a background class are not events and are not scored.
    """
    events = sorted(c for c in classes if c not in background)
    known = set(classes)
    unknown = sorted({ev.label for evs in references.values() for ev in evs} - known - set(background))
    return events + unknown, unknown


def _sed_list(events, labels):
    return [{'event_onset': ev.onset, 'event_offset': ev.offset, 'event_label': ev.label}
            for ev in events if ev.label in labels]


def _scores(result):
    """sed_eval's f_measure and error_rate sections -> flat dict; nan becomes None (JSON null)."""
    flat = {'f1': result['f_measure']['f_measure'], 'precision': result['f_measure']['precision'],
            'recall': result['f_measure']['recall'], 'error_rate': result['error_rate']['error_rate']}
    flat.update({k: v for k, v in result.get('count', {}).items()})
    return {k: None if v is None or math.isnan(v) else float(v) for k, v in flat.items()}


def evaluate(references, estimates, durations, labels, segment=1.0, collar=0.2, offset_ratio=0.5,
             event_based=True):
    """Segment- and event-based scores of many recordings, computed by sed_eval.

    references, estimates: {recording: [Event]} (a recording missing from
    estimates has no detections); durations: {recording: seconds}, each
    recording's evaluated length. Only events with a label in `labels` count.
    Event-based matching: onset within `collar` s, offset within
    max(collar, offset_ratio * the reference event's length).
    Returns {'segment': {'overall': scores, 'classes': {label: scores}}, 'event': ...},
    scores being f1, precision, recall, error_rate (None where undefined) and
    per class Nref and Nsys.
    """
    import sed_eval  # ~0.2 s of imports, only where scores are computed
    labels = list(labels)
    metrics = {'segment': sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=float(segment))}
    if event_based:
        metrics['event'] = sed_eval.sound_event.EventBasedMetrics(
            labels, t_collar=float(collar), percentage_of_length=float(offset_ratio))
    for rec, refs in references.items():
        ref, est = _sed_list(refs, labels), _sed_list(estimates.get(rec, []), labels)
        metrics['segment'].evaluate(ref, est, evaluated_length_seconds=float(durations[rec]))
        if event_based:
            metrics['event'].evaluate(ref, est)
    return {kind: {'overall': _scores(m.results_overall_metrics()),
                   'classes': {c: _scores(r) for c, r in m.results_class_wise_metrics().items()}}
            for kind, m in metrics.items()}


########################## thresholds ##########################

def detect_all(recordings, thresholds, params):
    """{recording: [Event]} for {recording: {'probs', 'starts', 'duration'}} and detect_events params."""
    return {rec: detect_events(r['probs'], r['starts'], r['duration'], thresholds=thresholds, **params)
            for rec, r in recordings.items()}


def threshold_sweep(recordings, references, labels, params, thresholds=SWEEP, segment=1.0):
    """[(threshold, evaluate(...))] with one threshold for every class, for each of `thresholds`.

    recordings: {recording: {'probs' (W, C), 'starts' (W,), 'duration'}};
    params: detect_events' other arguments (classes, hop, length, smoothing, ...).
    """
    durations = {rec: r['duration'] for rec, r in recordings.items()}
    return [(t, evaluate(references, detect_all(recordings, t, params), durations, labels, segment))
            for t in thresholds]


def tune_thresholds(recordings, references, labels, params, default=0.5, grid=TUNE_GRID, segment=1.0):
    """Per-class thresholds that maximise each class's own segment-based F1 on an annotated set.

    A class's segment-based counts depend only on its own threshold, so every
    class is tuned independently over `grid`: one detection and one sed_eval
    pass per grid value. Ties go to the value nearest `default`. A class whose
    F1 is 0 or undefined at every value (not annotated in the set, or never
    found) keeps `default`. Returns (thresholds dict with 'default',
    {tuned class: {'threshold', 'f1', 'f1_at_default'}}), F1 None where undefined.
    """
    durations = {rec: r['duration'] for rec, r in recordings.items()}
    values = sorted(set(grid) | {default})
    f1 = {}  # (class, threshold) -> segment-based F1 (nan where undefined)
    for t in values:
        scores = evaluate(references, detect_all(recordings, t, params), durations, labels, segment,
                          event_based=False)['segment']['classes']
        f1.update({(c, t): np.nan if s['f1'] is None else s['f1'] for c, s in scores.items()})
    tuned, report = {'default': float(default)}, {}
    for c in params['classes']:
        if c not in labels or not any(np.isfinite(f1[(c, t)]) and f1[(c, t)] > 0 for t in values):
            continue  # a background class, or never detected right in this set: keep the default
        best = max(values, key=lambda t: (np.nan_to_num(f1[(c, t)], nan=-1.0), -abs(t - default)))
        tuned[c] = float(best)
        at_default = f1[(c, default)]
        report[c] = {'threshold': float(best), 'f1': f1[(c, best)],
                     'f1_at_default': None if np.isnan(at_default) else at_default}
    return parse_thresholds(tuned, params['classes']), report


__all__ = ['ANNOTATION_PATTERNS', 'AnnotationError', 'SWEEP', 'TUNE_GRID', 'detect_all', 'evaluate',
           'find_annotation', 'label_list', 'parse_dcase_line', 'read_annotations', 'read_dcase',
           'read_raven', 'threshold_sweep', 'tune_thresholds']
