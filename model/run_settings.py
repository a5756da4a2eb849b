"""AED_train.py's run settings (AED_train.parse_args's namespace): the checks before any work,
what every checkpoint records about its run, and --resume restoring a run's settings and progress."""
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from model import config_checks as check
from model.checkpoint import CheckpointError, detached_copy, load_checkpoint, plain, resolve_model_path
from model.data import augmentation_problems
from model.net import ACTIVATIONS, flat_size
from model.training import select_device, set_rng_state

# run settings config.py sets (but BACKGROUND_MIX's 'prob': --background-mix), recorded in every checkpoint
CONFIG_SETTINGS = {
    'augmentation': 'IM_AUGMENTATION', 'learning_rate': 'LEARNING_RATE', 'lr_descent': 'LR_DESCENT',
    'epoch_start': 'EPOCH_START', 'optimizer': 'OPTIMIZER', 'l2_weight': 'L2_WEIGHT',
    'val_split': 'VAL_SPLIT', 'min_samples_per_class': 'MIN_SAMPLES_PER_CLASS',
    'max_samples_per_class': 'MAX_SAMPLES_PER_CLASS', 'sort_classes': 'SORT_CLASSES_ALPHABETICALLY',
    'randomize_train_set': 'RANDOMIZE_TRAIN_SET', 'multi_label': 'MULTI_LABEL',
    'val_has_multi_label': 'VAL_HAS_MULTI_LABEL', 'mean_targets_per_image': 'MEAN_TARGETS_PER_IMAGE',
    'snapshot_epochs': 'SNAPSHOT_EPOCHS', 'mixed_precision': 'MIXED_PRECISION',
    'background_mix': 'BACKGROUND_MIX'}
# run settings with a flag, recorded in every checkpoint
FLAG_SETTINGS = ('dataset', 'epochs', 'batch_size', 'seed', 'deterministic', 'compile', 'model_path',
                 'log_path', 'confmatrix_path', 'background_classes')
# the other config.py constants the run uses, each key.upper() (the network's are in every checkpoint)
CONSTANTS = ('im_dim', 'dropout', 'nonlinearity', 'init_gain', 'use_cache', 'load_output_layer',
             'save_after_interrupt', 'normalize_confmatrix', 'confmatrix_max_classes', 'spec_length',
             'spec_overlap', 'sample_rate', 'resample_method')
# settings that must be True or False: key: label
BOOLEANS = {**{key: CONFIG_SETTINGS.get(key, key.upper()) for key in (
    'lr_descent', 'sort_classes', 'randomize_train_set', 'multi_label', 'val_has_multi_label',
    'mixed_precision', 'use_cache', 'normalize_confmatrix', 'load_output_layer', 'save_after_interrupt')},
    'compile': 'COMPILE (--compile)'}


class SettingsError(Exception):
    """Settings that cannot work, one line each (the arguments); exit status 2."""


def settle(s, warn):
    """Before any work: restore a --resume checkpoint's settings, check all, read --pretrained.
    Returns (resume checkpoint, pretrained checkpoint), None where unused."""
    resume = pretrained = None
    if s.resume:
        try:
            resume = load_checkpoint(s.resume)
        except CheckpointError as e:
            raise SettingsError(str(e)) from None
        if not resume.get('resume') or 'optimizer' not in resume:
            raise SettingsError(f'{s.resume} is not a resume checkpoint (AED_<RUN_NAME>_last.pt); '
                                f'use --pretrained to start from its weights')
        restore(s, resume, warn)
        if s.pretrained:
            warn(f'--pretrained {s.pretrained} ignored: resuming {s.resume}')
    found = problems(s)
    if s.pretrained and not s.resume:
        label = 'PRETRAINED_MODEL (--pretrained)'
        found.append(check.model_file(label, s.pretrained, 'MODEL_PATH (--model-path)', s.model_path))
        if not found[-1]:
            try:
                pretrained = load_checkpoint(resolve_model_path(s.pretrained, s.model_path))
            except CheckpointError as e:
                found.append(f'{label}: {e}')
    if any(found):
        raise SettingsError(*filter(None, found))
    return resume, pretrained


def problems(s):
    """Every setting checked: [one-line problem or None]."""
    start = s.epoch_start if check.whole('', s.epoch_start, 0) is None else 0
    return [
        check.folder('DATASET_PATH (--dataset)', s.dataset),
        *(f'{label}: {path} is a file, not a folder' for label, path in (
            ('MODEL_PATH (--model-path)', s.model_path), ('LOG_PATH (--log-path)', s.log_path),
            ('CONFMATRIX_PATH (--confmatrix-path)', s.confmatrix_path)) if Path(path).is_file()),
        check.whole('EPOCH_START', s.epoch_start, 0),
        check.whole('EPOCHS (--epochs)', s.epochs, start),
        check.whole('BATCH_SIZE (--batch-size)', s.batch_size, 1),
        check.whole('TRAIN_WORKERS (--workers)', s.workers, 0),
        check.whole('RANDOM_SEED (--seed)', s.seed, 0),
        check.whole('MIN_SAMPLES_PER_CLASS (-1 = off)', s.min_samples_per_class, -1),
        None if s.max_samples_per_class is None
        else check.whole('MAX_SAMPLES_PER_CLASS (None = no limit)', s.max_samples_per_class, 1),
        check.whole('CONFMATRIX_MAX_CLASSES', s.confmatrix_max_classes, 1),
        check.one_of('OPTIMIZER', s.optimizer, ('adam', 'nesterov')),
        _device_problem(s.device),
        check.spec_window('SPEC_LENGTH', s.spec_length, 'SPEC_OVERLAP', s.spec_overlap, s.sample_rate),
        check.whole('SAMPLE_RATE', s.sample_rate, 1),
        check.one_of('RESAMPLE_METHOD', s.resample_method, check.RESAMPLE_METHODS),
        check.number('VAL_SPLIT (0 = no validation)', s.val_split, 0, below=1),
        check.number('L2_WEIGHT', s.l2_weight, 0),
        check.number('MEAN_TARGETS_PER_IMAGE', s.mean_targets_per_image, 1),
        *(check.flag(label, getattr(s, key)) for key, label in BOOLEANS.items()),
        *(f'IM_AUGMENTATION: {line}' for line in augmentation_problems(s.augmentation)),
        check.names('BACKGROUND_CLASSES (--background-classes)', s.background_classes),
        *_mix_problems(s.background_mix),
        *_other_problems(s),
        *_network_problems(s),
    ]


def _device_problem(name):
    """A device name torch knows, of a kind this machine has."""
    problem = check.device('DEVICE (--device)', name)
    if problem is None:
        try:
            select_device(name)
        except ValueError as e:
            problem = f'DEVICE (--device): {e}'
    return problem


def _other_problems(s):
    """The settings model.config_checks has no helper for."""
    lr, snapshots = s.learning_rate, s.snapshot_epochs
    return [
        None if (isinstance(lr, dict) and lr and all(check.whole('', k, 0) is None for k in lr)
                 and all(check.number('', r, 0) is None for r in lr.values()))
        else (f'LEARNING_RATE must be a non-empty {{epoch: rate}} dict with whole epochs >= 0 '
              f'and rates >= 0, got {lr!r}'),
        None if (isinstance(snapshots, (list, tuple))
                 and all(check.whole('', e, -1) is None for e in snapshots))
        else f'SNAPSHOT_EPOCHS must be a list of epochs ([-1] = every epoch), got {snapshots!r}',
        None if (isinstance(s.run_name, str) and s.run_name.strip() and not {'/', '\\'} & set(s.run_name))
        else f'RUN_NAME (--run-name) must be a non-empty name without / or \\, got {s.run_name!r}',
    ]


def _mix_problems(mix):
    """BACKGROUND_MIX: {'prob': p, 'ebr_db': (low, high), 'partial': q}, p and q from 0 to 1."""
    if not isinstance(mix, dict) or set(mix) != {'prob', 'ebr_db', 'partial'}:
        return [f"BACKGROUND_MIX must be {{'prob': p, 'ebr_db': (low, high), 'partial': q}}, got {mix!r}"]
    ebr = mix['ebr_db']
    pair = ebr if isinstance(ebr, (list, tuple)) and len(ebr) == 2 else ()
    finite = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
    return [check.fraction("BACKGROUND_MIX 'prob' (--background-mix)", mix['prob']),
            check.fraction("BACKGROUND_MIX 'partial'", mix['partial']),
            None if pair and finite and pair[0] <= pair[1]
            else f"BACKGROUND_MIX 'ebr_db' must be (low, high) in dB with low <= high, got {ebr!r}"]


def _network_problems(s):
    """The network's settings, then whether its five pooling stages fit the image."""
    found = [
        None if (isinstance(s.im_size, (list, tuple)) and len(s.im_size) == 2
                 and all(check.whole('', a, 1) is None for a in s.im_size))
        else f'IM_SIZE (--im-size) must be (width, height) in pixels, got {s.im_size!r}',
        check.whole('FILTERS (--filters)', s.filters, 1),
        check.one_of('IM_DIM', s.im_dim, (1, 3)),
        check.one_of('NONLINEARITY', s.nonlinearity, tuple(ACTIVATIONS)),
        check.number('DROPOUT', s.dropout, 0, below=1),
        check.number('INIT_GAIN', s.init_gain, 1e-12),
    ]
    if not any(found[:2]):
        try:
            flat_size(tuple(s.im_size), s.filters)
        except ValueError as e:
            found.append(f'IM_SIZE (--im-size) / FILTERS (--filters): {e}')
    return found


def _flag(key):
    return '--' + key.replace('_', '-')


def _shown(value):  # a plain() value as the user typed it
    return value if isinstance(value, str) else repr(value)


def restore(s, ckpt, warn):
    """Give s the resumed run's settings: a flag given overrides one with a warning, config.py
    never does (a differing constant is warned about)."""
    for key in ('im_size', 'filters'):
        if key in s.explicit and plain(getattr(s, key)) != plain(ckpt[key]):
            raise SettingsError(f'{_flag(key)} {_shown(plain(getattr(s, key)))} cannot change a resumed run: '
                                f'{s.resume} holds a network for {_flag(key)} {_shown(ckpt[key])}')
    s.im_size, s.filters, s.im_dim = list(ckpt['im_size']), ckpt['filters'], ckpt['im_dim']
    s.dropout, s.nonlinearity = ckpt.get('dropout', s.dropout), ckpt.get('nonlinearity', s.nonlinearity)
    if 'training' not in ckpt:
        warn(f'{s.resume} records no run settings (an older checkpoint): flags and config.py apply')
    saved = {'run_name': ckpt.get('run_name', s.run_name), **ckpt.get('training', {})}
    mine, theirs = s.background_mix, saved.get('background_mix')
    if 'background_mix' in s.explicit and isinstance(mine, dict) and isinstance(theirs, dict):
        # --background-mix sets the probability alone; the rest of BACKGROUND_MIX stays the run's
        s.background_mix = {**theirs, 'prob': mine['prob']}
    for key, value in saved.items():
        mine = plain(getattr(s, key, None))
        if key in s.explicit:  # a flag given with --resume
            if mine != value:
                warn(f"{_flag(key)} {_shown(mine)} overrides the resumed run's {_shown(value)}")
        elif key in FLAG_SETTINGS or key in CONFIG_SETTINGS or key == 'run_name':
            if key in CONFIG_SETTINGS and mine != value:
                warn(f"config.py's {CONFIG_SETTINGS[key]} {getattr(s, key)!r} differs from the resumed "
                     f"run's {value!r}; the run's is kept")
            setattr(s, key, value)  # paths as absolute strings


def settle_background(s, classes, train_items):
    """Once the dataset is read: the BACKGROUND MIX line. Mixing needs a background training
    image: without one it is off (a classification data set needs none), and an error where
    --background-mix asked for it. A --background-classes name the dataset lacks is an error."""
    missing = [c for c in s.background_classes if c not in classes]
    if missing and 'background_classes' in s.explicit:
        raise SettingsError(f'BACKGROUND_CLASSES (--background-classes): no class folder '
                            f'{", ".join(missing)} in {s.dataset} (its classes: {", ".join(classes)})')
    present = [c for c in classes if c in s.background_classes]
    images = sum(classes[label] in present for _, label in train_items)
    mix = s.background_mix
    if not images:
        why = f'no training image of a background class ({", ".join(s.background_classes) or "none given"})'
        if mix['prob'] > 0 and 'background_mix' in s.explicit:
            raise SettingsError(f"BACKGROUND_MIX 'prob' (--background-mix) is {mix['prob']}, "
                                f"but there is {why} to mix events onto")
        return f'BACKGROUND MIX: off ({why})'
    if not mix['prob']:
        return f'BACKGROUND MIX: off (background classes: {", ".join(present)})'
    (low, high), share = mix['ebr_db'], mix['partial']
    return (f"BACKGROUND MIX: {mix['prob']} of event images onto {images} images of {', '.join(present)}, "
            f"EBR {low} to {high} dB, {share} of them in part of the window")


def training_meta(s, classes, train_items, val_items):
    """A checkpoint's 'training' record: the settings --resume restores, the CSV log's path and
    the images per class."""
    meta = {key: getattr(s, key) for key in (*FLAG_SETTINGS, *CONFIG_SETTINGS)}
    meta['log_file'] = Path(s.log_path) / f'{s.run_name}.csv'
    meta['class_counts'] = {}
    for split, items in (('train', train_items), ('val', val_items)):
        counts = Counter(label for _, label in items)
        meta['class_counts'][split] = {c: counts[k] for k, c in enumerate(classes)}
    return plain(meta)


@dataclass
class Progress:
    """The best epoch so far (the original's max_acc, BEST_EPOCH and BEST_MODEL, here a copy of
    its weights: defect 1) and the epoch log."""
    epoch: int = 0
    max_acc: float = -1.0
    loss: float = math.inf
    state: dict = None
    rows: list = field(default_factory=list)


def resume_record(progress, epoch, optimizer, scaler, rng):
    """What AED_<RUN_NAME>_last.pt holds after `epoch` besides its weights and metadata."""
    return dict(resume=True, optimizer=detached_copy(optimizer.state_dict()), scaler=scaler.state_dict(),
                # when this epoch is the best, the best weights are the checkpoint's own
                best_state=None if progress.epoch == epoch else progress.state,
                best_epoch=progress.epoch, max_acc=progress.max_acc, best_loss=float(progress.loss),
                log=list(progress.rows), rng=rng)


def restore_progress(ckpt, epochs, np_rng, warn):
    """(Progress, first epoch to train) of a resume checkpoint; restores this process's random
    state (older checkpoints held rank 0's alone, as a dict)."""
    progress = Progress(ckpt['best_epoch'], ckpt['max_acc'], ckpt['best_loss'],
                        ckpt.get('best_state') or ckpt['state_dict'], list(ckpt.get('log', [])))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    states = ckpt['rng'] if isinstance(ckpt['rng'], list) else [ckpt['rng']]
    if len(states) < world:
        warn(f'the run saved the random states of {len(states)} process(es); '
             f'the others continue from fresh seeds')
    if rank < len(states):
        set_rng_state(states[rank], np_rng)
    if ckpt['epoch'] >= epochs:
        warn(f'nothing to train: the run already reached epoch {ckpt["epoch"]} of {epochs}')
    return progress, ckpt['epoch'] + 1
