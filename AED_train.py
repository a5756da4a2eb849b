"""Train the paper's CNN on class folders of spectrogram images.

Each epoch prints one line (train loss, validation loss and accuracy, learning
rate, time), rewrites the CSV log and the training-curve plot, draws the
confusion matrix and saves snapshots and the resume checkpoint (in a
background thread, while the next epoch trains); at the end the best epoch's
weights are saved as AED_<RUN_NAME>_model_epoch_<E>.pt and AED_<RUN_NAME>_model_best.pt.

    python AED_train.py
    python AED_train.py --dataset dataset/train/spec --run-name Demo --im-size 128 64 --filters 16 --epochs 10
    python AED_train.py --resume model/AED_Demo_last.pt
    torchrun --nproc_per_node=4 AED_train.py --run-name Urban4gpu

Every setting is checked before any work: each bad constant or flag is one
ERROR line, and the run stops with exit status 2. --resume restores the run's own settings (recorded in
its checkpoint); a flag given with it overrides one, with a warning.

BATCH_SIZE larger than the training set is clamped to its size with a
warning (a small dataset is legitimate). Under torchrun, BATCH_SIZE is per
process and only the first process prints and writes files.
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import config as cfg
from model import config_checks as check
from model.audio import read_spec_settings, spec_defaults
from model.checkpoint import (CheckpointError, build_model, class_counts, clean_state_dict,
                              detached_copy, load_checkpoint, load_weights, plain,
                              resolve_model_path, save_checkpoint)
from model.data import (DatasetError, SpecDataset, batch_augment, build_cache, check_augmentation,
                        make_loader, parse_dataset)
from model.metrics import class_metrics, plot_confusion_matrix
from model.net import ACTIVATIONS, AEDNet, count_params, flat_size, weighted_layers
from model.training import (BackgroundWriter, Precision, Timer, all_can_step, configure_backend,
                            describe_schedule, distributed_env, evaluate, learning_rate,
                            make_optimizer, maybe_compile, plot_training_curves, rng_state,
                            select_device, set_learning_rate, set_rng_state, train_epoch,
                            write_epoch_log)

ROOT = Path(__file__).resolve().parent


# run settings only config.py sets, recorded in every checkpoint: key: constant
CONFIG_SETTINGS = {
    'augmentation': 'IM_AUGMENTATION', 'learning_rate': 'LEARNING_RATE', 'lr_descent': 'LR_DESCENT',
    'epoch_start': 'EPOCH_START', 'optimizer': 'OPTIMIZER', 'l2_weight': 'L2_WEIGHT',
    'val_split': 'VAL_SPLIT', 'min_samples_per_class': 'MIN_SAMPLES_PER_CLASS',
    'max_samples_per_class': 'MAX_SAMPLES_PER_CLASS', 'sort_classes': 'SORT_CLASSES_ALPHABETICALLY',
    'randomize_train_set': 'RANDOMIZE_TRAIN_SET', 'multi_label': 'MULTI_LABEL',
    'val_has_multi_label': 'VAL_HAS_MULTI_LABEL', 'mean_targets_per_image': 'MEAN_TARGETS_PER_IMAGE',
    'snapshot_epochs': 'SNAPSHOT_EPOCHS', 'mixed_precision': 'MIXED_PRECISION'}
# run settings with a flag, recorded in every checkpoint: key: flag
FLAG_SETTINGS = {'dataset': '--dataset', 'epochs': '--epochs', 'batch_size': '--batch-size',
                 'seed': '--seed', 'deterministic': '--deterministic', 'compile': '--compile',
                 'model_path': '--model-path', 'log_path': '--log-path',
                 'confmatrix_path': '--confmatrix-path'}
PATH_SETTINGS = ('dataset', 'model_path', 'log_path', 'confmatrix_path')
BOOLEAN_SETTINGS = ('lr_descent', 'sort_classes', 'randomize_train_set', 'multi_label',
                    'val_has_multi_label', 'mixed_precision')


class TrainError(Exception):
    """A setting or input that makes training impossible; the message says why."""


class ConfigError(TrainError):
    """Constants or flags that cannot work, one line each (the arguments); reported
    before any work, exit status 2."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', type=Path, default=ROOT / cfg.DATASET_PATH,
                   help='folder of spectrogram images, one sub-folder per class')
    p.add_argument('--epochs', type=int, default=cfg.EPOCHS, help='last epoch to train')
    p.add_argument('--batch-size', type=int, default=cfg.BATCH_SIZE,
                   help='images per batch (per process under torchrun)')
    p.add_argument('--im-size', type=int, nargs=2, metavar=('W', 'H'), default=list(cfg.IM_SIZE),
                   help='network input width and height')
    p.add_argument('--filters', type=int, default=cfg.FILTERS,
                   help='filters of the first convolution (later blocks use 2x..16x)')
    p.add_argument('--run-name', default=cfg.RUN_NAME,
                   help='name in checkpoint, log and plot file names')
    p.add_argument('--model-path', type=Path, default=ROOT / cfg.MODEL_PATH,
                   help='folder for checkpoints (and to look up --pretrained names)')
    p.add_argument('--log-path', type=Path, default=ROOT / cfg.LOG_PATH,
                   help='folder for the CSV epoch log and the training-curve plot')
    p.add_argument('--confmatrix-path', type=Path, default=ROOT / cfg.CONFMATRIX_PATH,
                   help='folder for the per-epoch confusion-matrix plots')
    p.add_argument('--pretrained', default=cfg.PRETRAINED_MODEL,
                   help='checkpoint to start from: a path, or a file name under --model-path')
    p.add_argument('--resume', type=Path, default=None,
                   help="continue an interrupted run from its AED_<RUN_NAME>_last.pt with the "
                        "run's own settings; flags given with it override them")
    p.add_argument('--device', default=cfg.DEVICE, help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    p.add_argument('--workers', type=int, default=cfg.TRAIN_WORKERS,
                   help='data loader processes (0 loads in the main process)')
    p.add_argument('--seed', type=int, default=cfg.RANDOM_SEED, help='random seed')
    p.add_argument('--deterministic', action='store_true',
                   help='reproducible runs: deterministic algorithms, no cuDNN autotuning')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=cfg.COMPILE,
                   help='train with torch.compile (falls back with a warning where unavailable)')
    return p


def parse_args(argv):
    """Flags with their defaults, plus args.explicit: the names of the flags given
    (a resumed run keeps its own settings except for these)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # parsed again into a namespace that already holds every name: argparse then sets
    # no defaults, so only the flags on the command line replace the placeholder
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(args)}))
    args.explicit = {name for name, value in vars(given).items() if value is not unset}
    for key, name in CONFIG_SETTINGS.items():
        setattr(args, key, getattr(cfg, name))
    args.im_dim, args.dropout, args.nonlinearity = cfg.IM_DIM, cfg.DROPOUT, cfg.NONLINEARITY
    return args


def _number(label, value, low, below=None):
    """A finite number >= low (and < below)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value >= low and (below is None or value < below))
    if not ok:
        rule = f'from {low} to below {below}' if below is not None else f'of at least {low}'
        return f'{label} must be a number {rule}, got {value!r}'
    return None


def _is_whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _train_specific(args):
    """The checks model.config_checks has no helper for: [problem or None]."""
    schedule = args.learning_rate
    good_schedule = (isinstance(schedule, dict) and schedule
                     and all(_is_whole(k) and k >= 0 for k in schedule)
                     and all(_number('', r, 0) is None for r in schedule.values()))
    try:
        check_augmentation(args.augmentation)
        augmentation = None
    except ValueError as e:
        augmentation = f'IM_AUGMENTATION: {e}'
    im_size = args.im_size
    return [
        None if good_schedule else (f'LEARNING_RATE must be a non-empty {{epoch: rate}} dict with '
                                    f'whole epochs >= 0 and rates >= 0, got {schedule!r}'),
        augmentation,
        None if (isinstance(im_size, (list, tuple)) and len(im_size) == 2
                 and all(_is_whole(a) and a >= 1 for a in im_size))
        else f'IM_SIZE (--im-size) must be (width, height) in pixels, got {im_size!r}',
        None if (isinstance(args.snapshot_epochs, (list, tuple))
                 and all(_is_whole(e) for e in args.snapshot_epochs))
        else f'SNAPSHOT_EPOCHS must be a list of epochs ([-1] = every epoch), got {args.snapshot_epochs!r}',
        None if (isinstance(args.run_name, str) and args.run_name.strip()
                 and not {'/', '\\'} & set(args.run_name))
        else f'RUN_NAME (--run-name) must be a non-empty name without / or \\, got {args.run_name!r}',
        None if args.max_samples_per_class is None
        else check.whole('MAX_SAMPLES_PER_CLASS (None = no limit)', args.max_samples_per_class, 1),
    ]


def _output_folders(args):
    """Output folders may not exist yet, but must not be files."""
    return [f'{label}: {path} is a file, not a folder' if Path(path).is_file() else None
            for label, path in (('MODEL_PATH (--model-path)', args.model_path),
                                ('LOG_PATH (--log-path)', args.log_path),
                                ('CONFMATRIX_PATH (--confmatrix-path)', args.confmatrix_path))]


def check_config(args):
    """Every constant and flag this run uses (a resumed run's restored ones), checked
    before any work: [one-line problem], empty when all is well."""
    start = args.epoch_start if _is_whole(args.epoch_start) else 0
    problems = [
        check.folder('DATASET_PATH (--dataset)', args.dataset),
        *_output_folders(args),
        check.whole('EPOCH_START', args.epoch_start, 0),
        check.whole('EPOCHS (--epochs)', args.epochs, start),
        check.whole('BATCH_SIZE (--batch-size)', args.batch_size, 1),
        check.whole('FILTERS (--filters)', args.filters, 1),
        check.whole('TRAIN_WORKERS (--workers)', args.workers, 0),
        check.whole('RANDOM_SEED (--seed)', args.seed, 0),
        check.whole('MIN_SAMPLES_PER_CLASS (-1 = off)', args.min_samples_per_class, -1),
        check.whole('CONFMATRIX_MAX_CLASSES', cfg.CONFMATRIX_MAX_CLASSES, 1),
        check.one_of('IM_DIM', args.im_dim, (1, 3)),
        check.one_of('NONLINEARITY', args.nonlinearity, tuple(ACTIVATIONS)),
        check.one_of('OPTIMIZER', args.optimizer, ('adam', 'nesterov')),
        check.device('DEVICE (--device)', args.device),
        check.spec_window('SPEC_LENGTH', cfg.SPEC_LENGTH, 'SPEC_OVERLAP', cfg.SPEC_OVERLAP),
        check.whole('SAMPLE_RATE', cfg.SAMPLE_RATE, 1),
        check.one_of('RESAMPLE_METHOD', cfg.RESAMPLE_METHOD, check.RESAMPLE_METHODS),
        _number('DROPOUT', args.dropout, 0, below=1),
        _number('VAL_SPLIT (0 = no validation)', args.val_split, 0, below=1),
        _number('L2_WEIGHT', args.l2_weight, 0),
        _number('MEAN_TARGETS_PER_IMAGE', args.mean_targets_per_image, 1),
        _number('INIT_GAIN', cfg.INIT_GAIN, 1e-12),
        *_train_specific(args),
        *(check.flag(CONFIG_SETTINGS[key], getattr(args, key)) for key in BOOLEAN_SETTINGS),
        *(check.flag(name, getattr(cfg, name))
          for name in ('USE_CACHE', 'NORMALIZE_CONFMATRIX', 'LOAD_OUTPUT_LAYER', 'SAVE_AFTER_INTERRUPT')),
        check.flag('COMPILE (--compile)', args.compile),
    ]
    if args.pretrained and not args.resume:
        problems.append(check.model_file('PRETRAINED_MODEL (--pretrained)', args.pretrained,
                                         'MODEL_PATH (--model-path)', args.model_path))
    problems = [msg for msg in problems if msg]
    if not problems:
        try:  # needs a valid size and filter count
            flat_size(tuple(args.im_size), args.filters)
        except ValueError as e:
            problems.append(f'IM_SIZE (--im-size) / FILTERS (--filters): {e}')
    return problems


def load_resume(path):
    ckpt = load_checkpoint(path)
    if not ckpt.get('resume') or 'optimizer' not in ckpt:
        raise CheckpointError(f'{path} is not a resume checkpoint (AED_<RUN_NAME>_last.pt); '
                              f'use --pretrained to start from its weights')
    return ckpt


def training_meta(args, classes, train_items, val_items):
    """A checkpoint's 'training' metadata (JSON-able, paths absolute): every setting
    that determines the run, which --resume restores, plus the CSV log's path and
    the images per class."""
    meta = {key: getattr(args, key) for key in (*FLAG_SETTINGS, *CONFIG_SETTINGS)}
    meta['log_file'] = Path(args.log_path) / f'{args.run_name}.csv'
    meta['class_counts'] = {'train': class_counts(classes, train_items),
                            'val': class_counts(classes, val_items)}
    return plain(meta)


def _shown(value):
    return str(value) if isinstance(value, (str, Path)) else repr(value)


def apply_resume(args, ckpt, warn):
    """Give args the resumed run's settings; flags given explicitly override them with
    a warning. Raises ConfigError for an override the saved network cannot take."""
    for key, flag in (('im_size', '--im-size'), ('filters', '--filters')):
        if key in args.explicit and plain(getattr(args, key)) != plain(ckpt[key]):
            raise ConfigError(f'{flag} {_shown(plain(getattr(args, key)))} cannot change a resumed '
                              f'run: {args.resume} holds a network for {flag} {_shown(ckpt[key])}')
        setattr(args, key, list(ckpt[key]) if key == 'im_size' else ckpt[key])
    args.im_dim = ckpt['im_dim']
    args.dropout = ckpt.get('dropout', args.dropout)
    args.nonlinearity = ckpt.get('nonlinearity', args.nonlinearity)
    saved = {'run_name': ckpt.get('run_name', args.run_name), **ckpt.get('training', {})}
    if 'training' not in ckpt:
        warn(f'{args.resume} records no run settings (an older checkpoint): '
             f'flags and config.py apply')
    flags = {'run_name': '--run-name', **FLAG_SETTINGS}
    for key, flag in flags.items():
        if key not in saved:
            continue
        value = Path(saved[key]) if key in PATH_SETTINGS else saved[key]
        if key not in args.explicit:
            setattr(args, key, value)
        elif plain(getattr(args, key)) != plain(value):
            warn(f"{flag} {_shown(plain(getattr(args, key)))} overrides the resumed run's "
                 f"{_shown(saved[key])}")
    for key, name in CONFIG_SETTINGS.items():
        if key not in saved:
            continue
        if plain(getattr(args, key)) != saved[key]:
            warn(f"config.py's {name} {getattr(args, key)!r} differs from the resumed run's "
                 f"{saved[key]!r}; the run's is kept")
        setattr(args, key, saved[key])


def settle_settings(args, warn):
    """The run's settings, before any work: a --resume checkpoint's restored (flags
    given override them), then all checked. Returns the resume checkpoint or None."""
    resume = load_resume(args.resume) if args.resume else None
    if resume:
        apply_resume(args, resume, warn)
    problems = check_config(args)
    if problems:
        raise ConfigError(*problems)
    return resume


def announce(args, say):
    """Where the run writes and how its learning rate will run, once at the start."""
    for name, path in (('MODEL PATH', args.model_path), ('LOG PATH', args.log_path),
                       ('CONFMATRIX PATH', args.confmatrix_path)):
        say(f'{name}: {Path(path).absolute()}')
    say('LEARNING RATE: ' + describe_schedule(args.learning_rate, args.epoch_start, args.epochs,
                                              args.lr_descent))


def val_percent(fraction):
    """Accuracy in % truncated to 0.1, as the original printed and compared it."""
    return math.floor(fraction * 1000 + 1e-6) / 10.0


@dataclass
class Run:
    """One training run: the settings, the network and data the steps below share,
    and the progress they update (the shape of pytorch/examples' imagenet main.py)."""
    args: argparse.Namespace
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = None
    resume: dict = None           # the --resume checkpoint, else None
    run_name: str = None
    # data (read_dataset, prepare_data)
    classes: list = None
    train_items: list = None
    val_items: list = None
    batch_size: int = None
    train_set: SpecDataset = None
    train_loader: object = None
    sampler: DistributedSampler = None
    val_loader: object = None     # None without a validation set
    cpu_group: object = None      # under torchrun: a gloo group for small CPU collectives
    agree: object = None          # under torchrun: all processes skip a batch together
    writer: BackgroundWriter = None  # writes each epoch's files while the next one trains
    # network (build_network, setup_optimizer); net may be DDP-wrapped, module is the bare network
    module: torch.nn.Module = None
    net: torch.nn.Module = None
    optimizer: torch.optim.Optimizer = None
    precision: Precision = None
    channels_last: bool = False
    meta: dict = None             # checkpoint metadata
    np_rng: np.random.Generator = None
    # progress (restore_progress, report)
    start_epoch: int = None
    rows: list = field(default_factory=list)
    best_state: dict = None
    best_epoch: int = 0
    max_acc: float = -1.0
    best_loss: float = math.inf
    interrupted: bool = False

    @property
    def main_process(self):
        return self.rank == 0

    @property
    def multi_label(self):
        return bool(self.args.multi_label)

    def say(self, msg):
        if self.main_process:
            tqdm.write(msg, file=sys.stdout)

    def warn(self, msg):
        if self.main_process:
            tqdm.write(f'WARNING: {msg}', file=sys.stderr)

    def path(self, kind, epoch=None):
        """Where the run writes: 'log', 'curves', 'confmatrix', 'last', 'snapshot', 'best'."""
        models, name = Path(self.args.model_path), self.run_name
        logs, cms = Path(self.args.log_path), Path(self.args.confmatrix_path)
        return {'log': logs / f'{name}.csv',
                'curves': logs / f'{name}_curves.png',
                'confmatrix': cms / f'{name}_{epoch}.png',
                'last': models / f'AED_{name}_last.pt',
                'snapshot': models / f'AED_{name}_model_epoch_{epoch}.pt',
                'best': models / f'AED_{name}_model_best.pt'}[kind]


def train(args):
    """Run the whole training; returns a dict with net (unwrapped), best_epoch,
    max_acc, log rows and interrupted. Raises TrainError (ConfigError), CheckpointError."""
    run = Run(args, *(distributed_env(os.environ) or (0, 1, 0)))
    run.resume = settle_settings(args, run.warn)
    announce(args, run.say)
    run.run_name = args.run_name
    setup_device(run)
    read_dataset(run)
    build_network(run)
    setup_optimizer(run)
    ddp = run.world > 1
    if ddp:
        dist.init_process_group('nccl' if run.device.type == 'cuda' else 'gloo')
    run.writer = BackgroundWriter()
    try:
        wrap_network(run)
        prepare_data(run)
        restore_progress(run)
        fit(run)
        save_best(run)
        if ddp:
            dist.barrier()  # no process tears its group down while another still uses it
        return {'net': run.module, 'best_epoch': run.best_epoch, 'max_acc': run.max_acc,
                'log': run.rows, 'interrupted': run.interrupted}
    finally:
        run.writer.close()  # every file of the last finished epoch is on disk
        if ddp:
            # the DDP reducer holds the process group: freeing it after the group is
            # destroyed could hang in gloo's destructor (seen in the 2-process test)
            run.net = None
            dist.destroy_process_group()


# ---------------------------------------------------------------- set-up steps

def setup_device(run):
    try:
        device = select_device(run.args.device)
    except (ValueError, RuntimeError) as e:
        raise TrainError(str(e)) from None
    if device.type == 'cuda' and run.world > 1:
        device = torch.device('cuda', run.local_rank)
        torch.cuda.set_device(device)
    configure_backend(device, run.args.deterministic)
    run.device = device


def read_dataset(run):
    """Class folders -> run.classes, train/val items and the (clamped) batch size."""
    args = run.args
    try:
        classes, train_items, val_items, stats = parse_dataset(
            args.dataset, args.min_samples_per_class, args.max_samples_per_class,
            args.sort_classes, args.val_split, args.seed)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    if not train_items:
        raise TrainError(f'no training images left in {args.dataset} after the validation split')
    run.say(f'CLASSES: {len(classes)}')
    run.say(f'CLASS LABELS: {sorted(stats.items(), key=lambda kv: kv[1])}')
    run.say(f'TRAINING IMAGES: {len(train_items)}')
    run.say(f'VALIDATION IMAGES: {len(val_items)}')
    if not val_items:
        run.say('NO VALIDATION SET (VAL_SPLIT = 0): training on all images; '
                'the best epoch is the one with the lowest train loss')
    if run.resume and list(run.resume['classes']) != list(classes):
        raise ConfigError(f'{args.resume} was trained on classes {list(run.resume["classes"])}, '
                         f'but {args.dataset} holds {classes}')
    run.classes, run.train_items, run.val_items = classes, train_items, val_items
    run.batch_size = args.batch_size
    per_process = -(-len(train_items) // run.world)
    if run.batch_size > per_process:
        run.warn(f'batch size {run.batch_size} is larger than the training set '
                 f'({per_process} images per process); using {per_process}')
        run.batch_size = per_process


def build_network(run):
    """The network (new, resumed or pretrained) and the checkpoint metadata that describes it."""
    args, resume = run.args, run.resume
    torch.manual_seed(args.seed)
    run.np_rng = np.random.default_rng([args.seed, run.rank])
    if resume:
        net = build_model(resume)
        try:
            net.load_state_dict(resume['state_dict'])
        except RuntimeError:
            raise CheckpointError(f'{args.resume}: weights do not match the architecture '
                                  f'it describes') from None
        im_size, im_dim, filters = tuple(resume['im_size']), resume['im_dim'], resume['filters']
        dropout = resume.get('dropout', args.dropout)
        nonlinearity = resume.get('nonlinearity', args.nonlinearity)
    else:
        im_size, im_dim, filters = tuple(args.im_size), args.im_dim, args.filters
        dropout, nonlinearity = args.dropout, args.nonlinearity
        net = AEDNet(len(run.classes), im_size, im_dim, filters, dropout, nonlinearity, cfg.INIT_GAIN)
    if run.world > 1:
        # DDP starts every process from rank 0's weights; dropout masks should differ per process
        torch.manual_seed(args.seed + run.rank)
    run.say(f'MODEL HAS {weighted_layers(net)} WEIGHTED LAYERS')
    run.say(f'MODEL HAS {count_params(net)} PARAMS')
    if args.pretrained and not resume:
        path = resolve_model_path(args.pretrained, args.model_path)
        load_weights(net, load_checkpoint(path), cfg.LOAD_OUTPUT_LAYER, source=str(path))
        run.say(f'IMPORTED MODEL PARAMS FROM {path}'
                + ('' if cfg.LOAD_OUTPUT_LAYER else ' (ALL BUT THE OUTPUT LAYER)'))
    elif args.pretrained:
        run.warn(f'--pretrained {args.pretrained} ignored: resuming {args.resume}')

    run.meta = {'classes': list(run.classes), 'run_name': run.run_name, 'im_size': list(im_size),
                'im_dim': im_dim, 'filters': filters, 'dropout': dropout,
                'nonlinearity': nonlinearity, 'multi_label': run.multi_label,
                # what AED_spec.py recorded for these images, else config.py's settings
                'spec': read_spec_settings(args.dataset) or spec_defaults(
                    cfg.SPEC_LENGTH, cfg.SPEC_OVERLAP, cfg.SAMPLE_RATE, cfg.RESAMPLE_METHOD),
                'training': training_meta(args, run.classes, run.train_items, run.val_items)}
    run.module = net


def setup_optimizer(run):
    """Network onto the device, precision and optimiser (with their resumed state)."""
    args, resume, device = run.args, run.resume, run.device
    run.channels_last = device.type == 'cuda'
    net = run.module
    run.module = net.to(device, memory_format=torch.channels_last) if run.channels_last else net.to(device)
    run.precision = Precision(device, args.mixed_precision)
    run.optimizer = make_optimizer(args.optimizer, run.module.parameters(),
                                   learning_rate(args.learning_rate, args.epoch_start, args.epochs,
                                                 args.lr_descent))
    if resume:
        run.optimizer.load_state_dict(resume['optimizer'])
        if resume.get('scaler'):
            run.precision.scaler.load_state_dict(resume['scaler'])
    run.say(f'DEVICE: {device} ({run.precision}), {run.world} PROCESS(ES), BATCH SIZE {run.batch_size}')


def wrap_network(run):
    """run.net, what the training steps call: the network, DDP-wrapped under torchrun,
    compiled with --compile. Validation and checkpoints use the bare run.module."""
    run.net = run.module
    if run.world > 1:
        # small CPU collectives (skip flags, random states) never wait for the GPU
        run.cpu_group = dist.new_group(backend='gloo') if run.device.type == 'cuda' else None
        run.agree = all_can_step(run.cpu_group)
        run.net = DistributedDataParallel(
            run.module, device_ids=[run.device.index] if run.device.type == 'cuda' else None)
    run.net, warning = maybe_compile(run.net, run.args.compile)
    if warning:
        run.warn(warning)


def prepare_data(run):
    """Datasets and loaders; under torchrun each process trains and validates its own share."""
    args, num_classes = run.args, len(run.classes)
    im_size, im_dim = tuple(run.meta['im_size']), run.meta['im_dim']
    cache = None
    if cfg.USE_CACHE:
        cache = build_cache(run.train_items + run.val_items, im_size, im_dim,
                            workers=max(1, args.workers), progress=run.main_process)
    run.train_set = SpecDataset(run.train_items, num_classes, im_size, im_dim,
                                args.augmentation or None, seed=args.seed, cache=cache)
    val_set = SpecDataset(run.val_items, num_classes, im_size, im_dim, None, seed=args.seed, cache=cache)
    pin = run.device.type == 'cuda'
    if run.world > 1:
        run.sampler = DistributedSampler(run.train_set, num_replicas=run.world, rank=run.rank,
                                         shuffle=args.randomize_train_set, seed=args.seed)
        run.train_loader = make_loader(run.train_set, run.batch_size, False, args.workers, pin,
                                       sampler=run.sampler, seed=args.seed)
        # every process validates its own unpadded share; the sums are added up
        val_part = Subset(val_set, range(run.rank, len(val_set), run.world))
    else:
        run.train_loader = make_loader(run.train_set, run.batch_size, args.randomize_train_set,
                                       args.workers, pin, seed=args.seed)
        val_part = val_set
    if run.val_items:
        run.val_loader = make_loader(val_part, run.batch_size, False, args.workers, pin, seed=args.seed)


def restore_progress(run):
    """Log, best epoch and random state of a resumed run."""
    resume = run.resume
    run.start_epoch = run.args.epoch_start
    if resume:
        run.rows = list(resume.get('log', []))
        run.best_epoch, run.max_acc = resume['best_epoch'], resume['max_acc']
        run.best_loss = resume['best_loss']
        run.best_state = resume.get('best_state') or clean_state_dict(run.module.state_dict())
        run.start_epoch = resume['epoch'] + 1
        restore_rng(run, resume['rng'])
        run.say(f'RESUMING {run.run_name} AT EPOCH {run.start_epoch}')
    if run.start_epoch > run.args.epochs:
        run.warn(f'nothing to train: the run already reached epoch {run.start_epoch - 1} '
                 f'of {run.args.epochs}')


def gather_rng(run):
    """The random states of all processes, in rank order (each has its own dropout and mixing)."""
    state = rng_state(run.np_rng)
    if run.world == 1:
        return [state]
    states = [None] * run.world
    dist.all_gather_object(states, state, group=run.cpu_group)
    return states


def restore_rng(run, states):
    """This process's saved random state (older resume checkpoints held rank 0's
    alone, as a dict)."""
    states = states if isinstance(states, list) else [states]
    if len(states) < run.world:
        run.warn(f'the run saved the random states of {len(states)} process(es); '
                 f'the others continue from fresh seeds')
    if run.rank < len(states):
        set_rng_state(states[run.rank], run.np_rng)


# ---------------------------------------------------------------- the epoch loop

def fit(run):
    """Train epoch after epoch; Ctrl-C ends the loop after marking the run interrupted."""
    timer = Timer(run.device)
    run.say('START TRAINING...')
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, run.args.epochs + 1):
        try:
            start = timer.now()
            lr = learning_rate(run.args.learning_rate, epoch, run.args.epochs, run.args.lr_descent)
            set_learning_rate(run.optimizer, lr)
            totals = train_one_epoch(run, epoch)
            stats = validate(run)
            sums = add_up(run, totals, stats)
            seconds = timer.now() - start
            cm = report(run, epoch, lr, sums, seconds)
            rng = gather_rng(run)
            if run.main_process:
                save_epoch(run, epoch, cm, rng)
        except KeyboardInterrupt:
            run.interrupted = True
            run.warn(f'training interrupted in epoch {epoch}')
            break
    run.say('TRAINING DONE!')
    run.say(f'MAX ACC: {run.max_acc}' if run.val_loader is not None
            else f'MIN TRAIN LOSS: {run.best_loss:.6f}')


def mix_batches(batch_size, mean_targets, rng):
    """The original's batch augmentation (MULTI_LABEL), only for reasonably full batches."""
    def mix(x, y):
        if x.shape[0] >= batch_size // 2:
            return batch_augment(x, y, mean_targets, rng)
        return x, y
    return mix


def train_one_epoch(run, epoch):
    """One pass over this process's training share; returns [loss sum, batches, unreadable]."""
    run.train_set.set_epoch(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    mix = (mix_batches(run.batch_size, run.args.mean_targets_per_image, run.np_rng)
           if run.multi_label else None)
    with tqdm(total=len(run.train_loader), desc=f'EPOCH {epoch}', unit='batch', leave=False,
              disable=not run.main_process) as bar:
        train_loss, batches, bad = train_epoch(
            run.net, run.train_loader, run.optimizer, run.device, run.precision, run.multi_label,
            run.args.l2_weight, batch_transform=mix, channels_last=run.channels_last,
            progress=bar, agree=run.agree)
    if run.world > 1:
        # DDP keeps the weights equal; batch-norm statistics are made equal here
        for buffer in run.module.buffers():
            dist.broadcast(buffer, src=0)
    return [train_loss * batches, batches, bad]


def validate(run):
    """Validation sums of this process (see model.training.evaluate), or None without a validation set."""
    if run.val_loader is None:
        return None
    binary_acc = run.multi_label and run.args.val_has_multi_label
    # as in the original, VAL_HAS_MULTI_LABEL alone mixes validation batches;
    # the same mixing every epoch
    mix = None
    if run.args.val_has_multi_label:
        mix = mix_batches(run.batch_size, run.args.mean_targets_per_image,
                          np.random.default_rng([run.args.seed, 2, run.rank]))
    return evaluate(run.module, run.val_loader, run.device, run.precision, len(run.classes),
                    run.multi_label, binary_acc, batch_transform=mix, channels_last=run.channels_last)


def add_up(run, totals, stats):
    """Training totals and validation sums of all processes, as one numpy vector: [train
    loss sum, batches, bad, val loss sum, val accuracy sum, val batches, val bad, cm...]."""
    device = run.device
    packed = torch.tensor(totals, dtype=torch.float64, device=device)
    if stats is not None:
        packed = torch.cat([packed,
                            torch.stack([stats['loss_sum'], stats['acc_sum']]),
                            torch.tensor([stats['batches'], stats['bad']],
                                         dtype=torch.float64, device=device),
                            stats['cm'].flatten()])
    if run.world > 1:
        dist.all_reduce(packed)  # sums of all processes
    return packed.cpu().numpy()


def report(run, epoch, lr, sums, seconds):
    """Print the epoch line, log the row, keep the best weights; returns the confusion matrix or None."""
    batches = int(sums[1])
    if not batches:
        raise TrainError(f'epoch {epoch}: no training batch could be loaded '
                         f'(are the images in {run.args.dataset} readable?)')
    train_loss = sums[0] / batches
    bad = int(sums[2])
    row = {'epoch': epoch, 'train_loss': round(float(train_loss), 6), 'lr': lr,
           'time_s': round(seconds, 1), 'bad_images': bad}
    cm = None
    if run.val_loader is not None:
        val_loss_sum, acc_sum, val_batches, val_bad = sums[3:7]
        num_classes = len(run.classes)
        cm = sums[7:].reshape(num_classes, num_classes).astype(np.int64)
        bad += int(val_bad)
        row['bad_images'] = bad
        # means of the batch means, as the original averaged them
        val_loss = val_loss_sum / val_batches if val_batches else float('nan')
        acc = val_percent(acc_sum / val_batches) if val_batches else 0.0
        row.update(val_loss=round(float(val_loss), 6), val_accuracy=acc)
        run.say(f'EPOCH {epoch} TRAIN LOSS: {train_loss:.6f} VAL LOSS: {val_loss:.6f} '
                f'VAL ACCURACY: {acc} % LR: {lr:.6g} TIME: {row["time_s"]} s')
        improved = acc >= run.max_acc  # ties go to the later epoch, as in the original
    else:
        run.say(f'EPOCH {epoch} TRAIN LOSS: {train_loss:.6f} VAL LOSS: - VAL ACCURACY: - % '
                f'LR: {lr:.6g} TIME: {row["time_s"]} s')
        improved = train_loss <= run.best_loss
    if bad:
        run.warn(f'epoch {epoch}: {bad} unreadable image(s) skipped')
    run.rows.append(row)
    if improved:
        # a COPY of the weights: the original kept a reference to the live net (defect 1)
        run.best_state = clean_state_dict(run.module.state_dict())
        run.best_epoch = epoch
        if cm is not None:
            run.max_acc = row['val_accuracy']
        else:
            run.best_loss = train_loss
    return cm


def save_epoch(run, epoch, cm, rng):
    """Main process: hand the epoch's log, plots, snapshot and resume checkpoint
    (rng: every process's random state, see gather_rng) to the background writer.
    What it writes is copied here, so the next epoch cannot change it mid-write."""
    # the best state is a CPU copy of this epoch's weights already when it improved
    weights = (run.best_state if run.best_epoch == epoch
               else clean_state_dict(run.module.state_dict()))
    meta = {**run.meta, 'epoch': epoch}
    snapshot = (run.path('snapshot', epoch)
                if -1 in run.args.snapshot_epochs or epoch in run.args.snapshot_epochs else None)
    resume = dict(resume=True, optimizer=detached_copy(run.optimizer.state_dict()),
                  scaler=run.precision.scaler.state_dict(),
                  best_state=None if run.best_epoch == epoch else run.best_state,
                  best_epoch=run.best_epoch, max_acc=run.max_acc, best_loss=float(run.best_loss),
                  log=list(run.rows), rng=rng)
    run.writer.submit(write_epoch_files, run, epoch, cm, list(run.rows), weights, meta, snapshot, resume)
    if snapshot:
        run.say(f'SNAPSHOT SAVED: {snapshot}')


def write_epoch_files(run, epoch, cm, rows, weights, meta, snapshot, resume):
    """(writer thread) The files of one epoch; of run it reads only settings that stay fixed.
    The resume checkpoint comes last and replaces the old one atomically."""
    write_epoch_log(run.path('log'), rows)
    plot_training_curves(rows, run.path('curves'), f'{run.run_name}: epochs {rows[0]["epoch"]}-{epoch}')
    if cm is not None:
        precision_c, _, f1 = class_metrics(cm)
        title = (f'Confusion Matrix\n{run.run_name} - Epoch {epoch}\n'
                 f'Train Samples: {len(run.train_items)} Validation Samples: {len(run.val_items)}\n'
                 f'mP: {precision_c.mean():.4f} mF1: {f1.mean():.4f}')
        plot_confusion_matrix(cm, run.classes, run.path('confmatrix', epoch), title,
                              cfg.NORMALIZE_CONFMATRIX, cfg.CONFMATRIX_MAX_CLASSES)
    if snapshot:
        save_checkpoint(snapshot, weights, meta)
    save_checkpoint(run.path('last'), weights, meta, **resume)


def save_best(run):
    """Load the best epoch's weights into the network and save them (also after Ctrl-C if
    SAVE_AFTER_INTERRUPT)."""
    if run.best_state is None:
        run.warn('no epoch finished, no model saved')
        return
    if run.interrupted and not cfg.SAVE_AFTER_INTERRUPT:
        return
    run.writer.wait()  # the last epoch's snapshot may be the file written below
    run.module.load_state_dict(run.best_state)
    if run.main_process:
        meta = {**run.meta, 'epoch': run.best_epoch}
        save_checkpoint(run.path('snapshot', run.best_epoch), run.module, meta)
        path = save_checkpoint(run.path('best'), run.module, meta)
        run.say(f'BEST MODEL (EPOCH {run.best_epoch}) SAVED: {path}')


def main(argv=None):
    args = parse_args(argv)
    try:
        result = train(args)
    except ConfigError as e:
        for msg in e.args:
            print(f'ERROR: {msg}', file=sys.stderr)
        sys.exit(2)
    except (TrainError, CheckpointError) as e:
        sys.exit(f'ERROR: {e}')
    except KeyboardInterrupt:  # before the first epoch: nothing to save
        print('INTERRUPTED', file=sys.stderr)
        return 130
    return 130 if result['interrupted'] else 0


if __name__ == '__main__':
    sys.exit(main())
