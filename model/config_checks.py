"""Checks of the settings a script is about to use, run before any work (no torch import).

Each takes a label naming the setting as the user sets it ('MAX_PREDICTIONS (--results)') and the
value, and returns None or a one-line reason that starts with the label; exit_on prints them.
"""
import re
import sys
import traceback
from pathlib import Path

from model.audio import SPEC_SETTINGS

RESAMPLE_METHODS = ('linear', 'sinc')
DEVICE_PATTERN = re.compile(r'auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?')
# the file types a confusion-matrix plot can be saved as
PLOT_SUFFIXES = ('.png', '.pdf', '.svg', '.jpg', '.jpeg')


def config_failed(error):
    """One ERROR line (file, line, Python's message) and exit 2 for a config.py that fails to import."""
    if isinstance(error, SyntaxError):
        where, message = (error.filename, error.lineno), error.msg  # str() would repeat the location
    else:  # the line of config.py that raised (not of a module it imported)
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if Path(f.filename).name == 'config.py']
        where = (frames[-1].filename, frames[-1].lineno) if frames else ('config.py', '?')
        message = str(error)
    message = message.strip().splitlines()[0] if message.strip() else ''
    exit_on([f'{where[0]}, line {where[1]}: {type(error).__name__}: {message}'])


def exit_on(problems):
    """Print one ERROR line per problem (None entries are fine) and exit 2 if there is any."""
    problems = [msg for msg in problems if msg]
    for msg in problems:
        print(f'ERROR: {msg}', file=sys.stderr)
    if problems:
        sys.exit(2)


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


def device(label, value, torchrun=False):
    """A device name; under torchrun no cuda:N, since each process takes its local rank's GPU."""
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        return f"{label} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}"
    if torchrun and ':' in value:
        return (f"{label} is {value!r}, but under torchrun each process takes the GPU of its local "
                f"rank: use 'cuda' or 'auto' (CUDA_VISIBLE_DEVICES picks the GPUs)")
    return None


def spec_window(length_label, length, overlap_label, overlap, rate):
    """Why `length` s windows overlapping by `overlap` s cannot be cut at `rate` Hz (defect 10; None
    passes); a bad rate (SAMPLE_RATE's own check) counts as 44.1 kHz."""
    if whole('SAMPLE_RATE', rate, 1):
        rate = 44100
    if length is not None and length not in SPEC_SETTINGS:
        return f'{length_label} must be one of {", ".join(map(str, sorted(SPEC_SETTINGS)))} s, got {length!r}'
    number = isinstance(overlap, (int, float)) and not isinstance(overlap, bool)
    # the hop, int((length - overlap) * rate) samples, must be at least one or splitting never advances
    if overlap is None or number and overlap >= 0 and (length is None or (length - overlap) * rate >= 1):
        return None
    limit = 'the window length' if length is None else \
        f'{length_label} = {length} s by one sample (1/{rate} s) or more'
    return f'{overlap_label} must be at least 0 and smaller than {limit}, got {overlap!r}'


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


def names(label, value):
    """A list of names (class names)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        return f'{label} must be a list of names, got {value!r}'
    return None


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
