"""Checks of the settings a script is about to use, run before any work (no torch import).

Each function takes a label naming the setting the way the user sets it, e.g.
'MAX_PREDICTIONS (--results)', and the value; it returns None when the value
is fine, else a one-line reason that starts with the label. The scripts
collect the reasons into their check_config() and print one ERROR line each.

    problems = [whole('BATCH_SIZE (--batch-size)', 0, 1), fraction('MIN_CONFIDENCE', 2)]
    # ['BATCH_SIZE (--batch-size) must be a whole number of at least 1, got 0', ...]
"""
import re
from pathlib import Path

from model.audio import check_spec_params

RESAMPLE_METHODS = ('linear', 'sinc')
DEVICE_PATTERN = re.compile(r'auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?')
# the file types a confusion-matrix plot can be saved as
PLOT_SUFFIXES = ('.png', '.pdf', '.svg', '.jpg', '.jpeg')


def whole(label, value, minimum):
    """A whole number (not a bool) of at least minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f'{label} must be a whole number of at least {minimum}, got {value!r}'
    return None


def fraction(label, value):
    """A number from 0 to 1 (a confidence)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return f'{label} must be a number from 0 to 1, got {value!r}'
    return None


def flag(label, value):
    if not isinstance(value, bool):
        return f'{label} must be True or False, got {value!r}'
    return None


def one_of(label, value, choices):
    if value not in choices:
        return f'{label} must be one of {", ".join(map(repr, choices))}, got {value!r}'
    return None


def device(label, value):
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        return f"{label} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}"
    return None


def spec_window(length_label, length, overlap_label, overlap):
    """A chunk length and overlap AED_spec can produce; None stands for 'the model's'."""
    if length is not None:
        try:
            check_spec_params(length, 0)
        except ValueError as e:
            return f'{length_label}: {e}'
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))
                                or overlap < 0):
        return f'{overlap_label} must be a number of seconds >= 0, got {overlap!r}'
    if length is not None and overlap is not None and not overlap < length:
        return (f'{overlap_label} must be smaller than {length_label} ({length} s), '
                f'got {overlap} (0 <= overlap < {length} works)')
    return None


def model_file(label, name, dir_label, model_dir):
    """A checkpoint that exists: a path as given, or a file name under model_dir."""
    if not isinstance(name, (str, Path)) or not str(name):
        return f'{label} must name a checkpoint file, got {name!r}'
    if Path(name).is_file() or (Path(model_dir) / name).is_file():
        return None
    if not Path(model_dir).is_dir():
        where = f'{dir_label} {model_dir}, which does not exist'
    else:
        found = sorted(p.name for p in Path(model_dir).glob('*.pt'))
        where = f'{dir_label} {model_dir}; it holds {", ".join(found[:6]) or "no .pt files"}'
    return f'{label}: model file {name} not found (also looked in {where})'


def folder(label, path):
    if not Path(path).is_dir():
        return f'{label}: folder {path} does not exist'
    return None


def output_file(label, path, suffixes=None):
    """A file to write at the end of a run: not a folder, and of a type that can be written."""
    if path is None or str(path) == '':
        return None
    if Path(path).is_dir():
        return f'{label}: {path} is a folder; give a file name'
    if suffixes and Path(path).suffix.lower() not in suffixes:
        return f'{label}: {path} must end in one of {", ".join(suffixes)}'
    return None


def number(label, value, low, below=None):
    """A finite number of at least low (and below `below`)."""
    top = float('inf') if below is None else below
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < top:
        rule = f'from {low} to below {below}' if below is not None else f'of at least {low}'
        return f'{label} must be a number {rule}, got {value!r}'
    return None
