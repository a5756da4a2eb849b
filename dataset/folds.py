"""Lay out a data set's predefined cross-validation folds as class folders of symbolic links.

FORMAT is urbansound8k, esc50, esc10 or csv; ROOT is the download as its authors ship it
(for csv: the CSV file itself, with columns file,label,fold and an optional source). Under --out:

    clips/<class>/<clip>          every clip once, the input of ONE AED_spec.py run
    fold<k>/test/<class>/<clip>   the clips of fold k (AED_eval.py --testdir)
    fold<k>/train/<class>/<png>   with --specs: the PNGs of every other fold's clips, linked
                                  from AED_spec.py's output (AED_train.py --dataset)

    python -m dataset.folds urbansound8k ~/data/UrbanSound8K --out us8k
    python -m dataset.folds urbansound8k ~/data/UrbanSound8K --out us8k --specs us8k/spec
    python -m dataset.folds esc10 ~/data/ESC-50-master --out esc10 --fold 1 2 --skip-missing
"""
import argparse
import csv
import os
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from model.audio import SETTINGS_FILE


class Format(NamedTuple):
    metadata: str  # the CSV, relative to ROOT ('' for csv: ROOT is the CSV)
    audio: str     # the folder of the clips, relative to ROOT ({fold}: the row's fold)
    file: str
    label: str
    source: str    # the recording a clip was cut from: its clips must share a fold
    folds: range   # the official folds; any whole number >= 1 for csv


FORMATS = {
    'urbansound8k': Format('metadata/UrbanSound8K.csv', 'audio/fold{fold}', 'slice_file_name',
                           'class', 'fsID', range(1, 11)),
    'esc50': Format('meta/esc50.csv', 'audio', 'filename', 'category', 'src_file', range(1, 6)),
    'csv': Format('', '', 'file', 'label', 'source', range(1, sys.maxsize)),
}
FORMATS['esc10'] = FORMATS['esc50']


class Clip(NamedTuple):
    line: int     # its row's line in the CSV
    name: str     # as the CSV lists it
    path: Path    # on disk
    label: str    # a safe folder name
    fold: int
    source: str   # '' when the CSV has no source column


class InputError(Exception):
    """The metadata as a whole is unusable."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('format', choices=sorted(FORMATS), help='metadata layout')
    p.add_argument('root', type=Path, help='the download\'s folder (for csv: the CSV file)')
    p.add_argument('--out', type=Path, required=True, help='folder for the linked layout')
    p.add_argument('--specs', type=Path, default=None,
                   help='AED_spec.py\'s output for OUT/clips: also link each fold\'s training PNGs')
    p.add_argument('--fold', type=int, nargs='+', default=None, metavar='K',
                   help='lay out only these test folds (None: all)')
    p.add_argument('--esc10', action='store_true', help='esc50: only the ESC-10 subset')
    p.add_argument('--skip-missing', action='store_true',
                   help='leave out clips missing on disk (each is an ERROR line) instead of stopping')
    return p.parse_args(argv)


def safe_class(name):
    """A folder name for a class: no path separators or control characters, not hidden."""
    safe = re.sub(r'[\x00-\x1f\x7f/\\]', '_', name.strip())
    safe = re.sub(r'^\.', '_', safe)
    while len(safe.encode()) > 255:  # the longest file name most file systems allow
        safe = safe[:-1]
    return safe


def read_metadata(path, columns):
    """[(line, row dict)] of a CSV holding at least the given columns, else InputError."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputError(f'{path}: no column {", ".join(missing)} (it has: {", ".join(header)})')
            reader.fieldnames = header
            return [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f'{path}: {type(e).__name__}: {e}') from e


def parse_row(line, row, fmt, where, base):
    """(Clip or None, [problems]) for one metadata row; a problem is (kind, message)."""
    name, label, fold = ((row.get(k) or '').strip() for k in (fmt.file, fmt.label, 'fold'))
    problems = []
    if not name:
        problems.append(('error', f'{where}: no file name in column {fmt.file}'))
    if not safe_class(label):
        problems.append(('error', f'{where}: {name}: no usable class name in column {fmt.label}'))
    if not re.fullmatch(r'\d+', fold) or int(fold) not in fmt.folds:
        folds = f'{fmt.folds.start} to {fmt.folds.stop - 1}' if fmt.metadata else 'at least 1'
        problems.append(('error', f'{where}: {name}: fold {fold!r} is out of range ({folds})'))
    if problems:
        return None, problems
    path = base / fmt.audio.format(fold=int(fold)) / name
    if not path.is_file():
        return None, [('missing', f'{where}: {path}: file not found')]
    source = (row.get(fmt.source) or '').strip()
    return Clip(line, name, path, safe_class(label), int(fold), source), []


def read_clips(fmt_name, root, skip_missing):
    """Every clip the metadata lists, checked as a whole; InputError after every problem is printed."""
    fmt = FORMATS[fmt_name]
    metadata, base = (root / fmt.metadata, root) if fmt.metadata else (root, root.parent)
    columns = [fmt.file, fmt.label, 'fold'] + ([fmt.source] if fmt.metadata else [])
    clips, errors, raw_labels = [], 0, defaultdict(set)
    for line, row in read_metadata(metadata, columns + (['esc10'] if fmt_name == 'esc10' else [])):
        if fmt_name == 'esc10' and (row['esc10'] or '').strip() != 'True':
            continue
        where = f'{metadata} line {line}'
        clip, problems = parse_row(line, row, fmt, where, base)
        for kind, msg in problems:
            skip = skip_missing and kind == 'missing'
            print(f'ERROR: {msg}' + (', skipped' if skip else ''), file=sys.stderr)
            errors += not skip
        if clip is None:
            continue
        label = row[fmt.label].strip()
        if clip.label != label and label not in raw_labels[clip.label]:
            print(f'WARNING: {where}: class {label!r} is not a valid folder name; '
                  f'its folder is {clip.label!r}', file=sys.stderr)
        raw_labels[clip.label].add(label)
        clips.append(clip)
    for safe, raw in raw_labels.items():
        if len(raw) > 1:
            errors += 1
            print(f'ERROR: {metadata}: classes {", ".join(map(repr, sorted(raw)))} would share '
                  f'the folder {safe!r}', file=sys.stderr)
    errors += check_clips(clips, metadata, fmt.source)
    if errors:
        raise InputError(f'{metadata}: {errors} problem(s), nothing was laid out')
    return clips


def check_clips(clips, metadata, source_column):
    """Print the problems of the clip list as a whole, one ERROR line each; return their count."""
    errors, seen, first_of_source = [], {}, {}
    for clip in clips:
        where = f'{metadata} line {clip.line}: {clip.name}'
        first = seen.setdefault(os.path.realpath(clip.path), clip)
        if first is not clip:
            errors.append(f'{where}: the same clip as line {first.line}, listed twice')
        first = first_of_source.setdefault(clip.source, clip) if clip.source else clip
        if first.fold != clip.fold:
            errors.append(f'{where}: {source_column} {clip.source} is in fold {clip.fold} and in '
                          f'fold {first.fold} (line {first.line}); the clips of one source must '
                          f'share a fold, or testing sees what training saw')
    folds = sorted({c.fold for c in clips})
    if len(folds) < 2:
        errors.append(f'{metadata}: cross-validation needs at least 2 folds, found {folds}')
    for msg in errors:
        print(f'ERROR: {msg}', file=sys.stderr)
    return len(errors)


def link_names(clips):
    """A file name per clip whose stem is unique in its class folder (case-blind), so that
    AED_spec.py names its PNGs <stem>_<n>.png; a clip whose stem is taken gets <stem>-<k>."""
    def stem(clip):
        return re.sub(r'^\.', '_', clip.path.stem)  # AED_spec skips hidden files
    owners = {}
    for clip in clips:
        owners.setdefault((clip.label, stem(clip).casefold()), clip)
    names = {}
    for clip in clips:
        name, k = stem(clip), 1
        while owners.setdefault((clip.label, name.casefold()), clip) is not clip:
            k += 1
            name = f'{stem(clip)}-{k}'
        names[clip] = name + clip.path.suffix
    return names


def clear_links(folder):
    """Remove the symbolic links below folder and the folders they leave empty (nothing else)."""
    for parent, dirs, files in os.walk(folder, topdown=False):
        for name in files + dirs:
            if os.path.islink(os.path.join(parent, name)):
                os.unlink(os.path.join(parent, name))
        if not os.listdir(parent):
            os.rmdir(parent)


def link(target, link_path):
    """A symbolic link to target (an absolute path), with its folders."""
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target)


def spec_index(specs, clips, names):
    """{clip: [its PNG names]}: <stem>_<n>.png in its class folder, so x_1 never takes x_10's
    or x_1_3's PNGs; the stem of a name is everything before its last underscore."""
    found = defaultdict(list)
    for label in {c.label for c in clips}:
        folder = specs / label
        for png in sorted(os.listdir(folder)) if folder.is_dir() else []:
            m = re.fullmatch(r'(.*)_\d+\.png', png)
            if m:
                found[label, m.group(1)].append(png)
    return {c: found.get((c.label, Path(names[c]).stem), []) for c in clips}


def lay_out(clips, out, test_folds, specs):
    """Link clips/, fold<k>/test/ and, given specs, fold<k>/train/ below out (old links there
    are removed first); returns one line per fold."""
    for old in [out / 'clips'] + sorted(out.glob('fold*')):
        clear_links(old)
    names = link_names(clips)
    for clip in clips:
        link(clip.path, out / 'clips' / clip.label / names[clip])
    pngs = spec_index(specs, clips, names) if specs else {}
    for clip in (c for c in pngs if not pngs[c]):
        print(f'WARNING: {clip.path}: no spectrograms in {specs / clip.label} (unreadable?); '
              f'left out of training', file=sys.stderr)
    lines = []
    for k in test_folds:
        test = [c for c in clips if c.fold == k]
        for clip in test:
            link(clip.path, out / f'fold{k}' / 'test' / clip.label / names[clip])
        line = f'FOLD {k}: TEST {len(test)} CLIPS'
        if specs:
            train = [c for c in clips if c.fold != k]
            for clip in train:
                for png in pngs[clip]:
                    link(specs / clip.label / png, out / f'fold{k}' / 'train' / clip.label / png)
            link(specs / SETTINGS_FILE, out / f'fold{k}' / 'train' / SETTINGS_FILE)
            line += f' TRAIN {len(train)} CLIPS {sum(len(pngs[c]) for c in train)} SPECS'
        lines.append(line)
    return lines


def check_args(args, clips):
    """The flags' problems that only the metadata can tell, as InputError."""
    folds = sorted({c.fold for c in clips})
    wrong = [k for k in args.fold or [] if k not in folds]
    if wrong:
        raise InputError(f'--fold {" ".join(map(str, wrong))}: not among the folds of the metadata '
                         f'({", ".join(map(str, folds))})')
    if args.specs and not (args.specs / SETTINGS_FILE).is_file():
        raise InputError(f'--specs {args.specs}: no {SETTINGS_FILE}; give it the --dst of the '
                         f'AED_spec.py run on {args.out / "clips"}')
    return args.fold or folds


def main(argv=None):
    args = parse_args(argv)
    fmt = 'esc10' if args.esc10 and args.format == 'esc50' else args.format
    try:
        if args.esc10 and fmt != 'esc10':
            raise InputError(f'--esc10 is a subset of esc50, not of {args.format}')
        if args.out.exists() and not args.out.is_dir():
            raise InputError(f'--out {args.out}: not a folder')
        clips = read_clips(fmt, args.root.absolute(), args.skip_missing)
        test_folds = check_args(args, clips)
    except InputError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        sys.exit(2)
    try:
        lines = lay_out(clips, args.out.absolute(), sorted(set(test_folds)),
                        args.specs and args.specs.absolute())
    except OSError as e:
        sys.exit(f'ERROR: {e.filename}: {e.strerror or e}')
    print(f'CLIPS: {len(clips)} CLASSES: {len({c.label for c in clips})} '
          f'FOLDS: {len({c.fold for c in clips})} -> {args.out / "clips"}')
    for line in lines:
        print(line)
    return 0


if __name__ == '__main__':
    main()
