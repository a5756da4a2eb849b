"""Train the paper's CNN on class folders of spectrogram images.

Each epoch prints one line (train loss, validation loss and accuracy, learning
rate, time), rewrites the CSV log and the training-curve plot, draws the
confusion matrix and saves snapshots and the resume checkpoint (in a
background thread, while the next epoch trains); at the end the best epoch's
weights are saved as AED_<RUN_NAME>_model_epoch_<E>.pt and AED_<RUN_NAME>_model_best.pt.

    python AED_train.py
    python AED_train.py --dataset dataset/train/spec --run-name Demo --im-size 128 64 --filters 16 --epochs 10
    python AED_train.py --resume model/AED_Demo_last.pt --epochs 20 --compile
    torchrun --nproc_per_node=4 AED_train.py --run-name Urban4gpu

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
from model.audio import read_spec_settings
from model.checkpoint import (CheckpointError, build_model, clean_state_dict, detached_copy,
                              load_checkpoint, load_weights, resolve_model_path, save_checkpoint)
from model.data import DatasetError, SpecDataset, batch_augment, build_cache, make_loader, parse_dataset
from model.metrics import class_metrics, plot_confusion_matrix
from model.net import AEDNet, count_params, flat_size, weighted_layers
from model.training import (BackgroundWriter, Precision, Timer, all_can_step, configure_backend,
                            evaluate, learning_rate, make_optimizer, maybe_compile,
                            plot_training_curves, rng_state, select_device, set_learning_rate,
                            set_rng_state, train_epoch, write_epoch_log)

ROOT = Path(__file__).resolve().parent


class TrainError(Exception):
    """A setting or input that makes training impossible; the message says why."""


def parse_args(argv):
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
                   help='name in checkpoint, log and plot file names (a resumed run keeps its own)')
    p.add_argument('--model-path', type=Path, default=ROOT / cfg.MODEL_PATH,
                   help='folder for checkpoints (and to look up --pretrained names)')
    p.add_argument('--pretrained', default=cfg.PRETRAINED_MODEL,
                   help='checkpoint to start from: a path, or a file name under --model-path')
    p.add_argument('--resume', type=Path, default=None,
                   help='continue an interrupted run from its AED_<RUN_NAME>_last.pt')
    p.add_argument('--device', default=cfg.DEVICE, help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    p.add_argument('--workers', type=int, default=cfg.TRAIN_WORKERS,
                   help='data loader processes (0 loads in the main process)')
    p.add_argument('--seed', type=int, default=cfg.RANDOM_SEED, help='random seed')
    p.add_argument('--deterministic', action='store_true',
                   help='reproducible runs: deterministic algorithms, no cuDNN autotuning')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=cfg.COMPILE,
                   help='train with torch.compile (falls back with a warning where unavailable)')
    return p.parse_args(argv)


def check_settings(args):
    """Settings that can be checked before touching any file."""
    if not 0 <= cfg.VAL_SPLIT < 1:
        raise TrainError(f'VAL_SPLIT must be at least 0 and below 1 (got {cfg.VAL_SPLIT}); '
                         f'0 trains on everything without validation')
    if args.batch_size < 1:
        raise TrainError(f'batch size must be at least 1, got {args.batch_size}')
    if args.epochs < cfg.EPOCH_START:
        raise TrainError(f'--epochs ({args.epochs}) is below EPOCH_START ({cfg.EPOCH_START})')
    if args.filters < 1:
        raise TrainError(f'--filters must be at least 1, got {args.filters}')
    if args.workers < 0:
        raise TrainError(f'--workers must be 0 or more, got {args.workers}')
    if cfg.OPTIMIZER not in ('adam', 'nesterov'):
        raise TrainError(f"OPTIMIZER must be 'adam' or 'nesterov', got {cfg.OPTIMIZER!r}")
    if not cfg.LEARNING_RATE:
        raise TrainError('LEARNING_RATE must hold at least one {epoch: rate} entry')
    try:
        flat_size(tuple(args.im_size), args.filters)
    except ValueError as e:
        raise TrainError(str(e)) from None


def distributed_env(environ):
    """(rank, world size, local rank) when started by torchrun with several processes, else None."""
    world = int(environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return None
    return int(environ['RANK']), world, int(environ.get('LOCAL_RANK', '0'))


def load_resume(path):
    ckpt = load_checkpoint(path)
    if not ckpt.get('resume') or 'optimizer' not in ckpt:
        raise CheckpointError(f'{path} is not a resume checkpoint (AED_<RUN_NAME>_last.pt); '
                              f'use --pretrained to start from its weights')
    return ckpt


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
        return bool(cfg.MULTI_LABEL)

    def say(self, msg):
        if self.main_process:
            tqdm.write(msg, file=sys.stdout)

    def warn(self, msg):
        if self.main_process:
            tqdm.write(f'WARNING: {msg}', file=sys.stderr)

    def path(self, kind, epoch=None):
        """Where the run writes: 'log', 'curves', 'confmatrix', 'last', 'snapshot', 'best'."""
        models, name = Path(self.args.model_path), self.run_name
        return {'log': ROOT / cfg.LOG_PATH / f'{name}.csv',
                'curves': ROOT / cfg.LOG_PATH / f'{name}_curves.png',
                'confmatrix': ROOT / cfg.CONFMATRIX_PATH / f'{name}_{epoch}.png',
                'last': models / f'AED_{name}_last.pt',
                'snapshot': models / f'AED_{name}_model_epoch_{epoch}.pt',
                'best': models / f'AED_{name}_model_best.pt'}[kind]


def train(args):
    """Run the whole training; returns a dict with net (unwrapped), best_epoch,
    max_acc, log rows and interrupted. Raises TrainError, CheckpointError."""
    check_settings(args)
    run = Run(args, *(distributed_env(os.environ) or (0, 1, 0)))
    setup_device(run)
    run.resume = load_resume(args.resume) if args.resume else None
    run.run_name = run.resume['run_name'] if run.resume else args.run_name
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
            args.dataset, cfg.MIN_SAMPLES_PER_CLASS, cfg.MAX_SAMPLES_PER_CLASS,
            cfg.SORT_CLASSES_ALPHABETICALLY, cfg.VAL_SPLIT, args.seed)
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
        raise TrainError(f'{args.resume} was trained on classes {list(run.resume["classes"])}, '
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
        dropout = resume.get('dropout', cfg.DROPOUT)
        nonlinearity = resume.get('nonlinearity', cfg.NONLINEARITY)
    else:
        im_size, im_dim, filters = tuple(args.im_size), cfg.IM_DIM, args.filters
        dropout, nonlinearity = cfg.DROPOUT, cfg.NONLINEARITY
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
                'spec': read_spec_settings(args.dataset) or {
                    'length': cfg.SPEC_LENGTH, 'overlap': cfg.SPEC_OVERLAP,
                    'sample_rate': cfg.SAMPLE_RATE, 'resample': cfg.RESAMPLE_METHOD}}
    run.module = net


def setup_optimizer(run):
    """Network onto the device, precision and optimiser (with their resumed state)."""
    args, resume, device = run.args, run.resume, run.device
    run.channels_last = device.type == 'cuda'
    net = run.module
    run.module = net.to(device, memory_format=torch.channels_last) if run.channels_last else net.to(device)
    run.precision = Precision(device, cfg.MIXED_PRECISION)
    run.optimizer = make_optimizer(cfg.OPTIMIZER, run.module.parameters(),
                                   learning_rate(cfg.LEARNING_RATE, cfg.EPOCH_START, args.epochs,
                                                 cfg.LR_DESCENT))
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
                                cfg.IM_AUGMENTATION or None, seed=args.seed, cache=cache)
    val_set = SpecDataset(run.val_items, num_classes, im_size, im_dim, None, seed=args.seed, cache=cache)
    pin = run.device.type == 'cuda'
    if run.world > 1:
        run.sampler = DistributedSampler(run.train_set, num_replicas=run.world, rank=run.rank,
                                         shuffle=cfg.RANDOMIZE_TRAIN_SET, seed=args.seed)
        run.train_loader = make_loader(run.train_set, run.batch_size, False, args.workers, pin,
                                       sampler=run.sampler, seed=args.seed)
        # every process validates its own unpadded share; the sums are added up
        val_part = Subset(val_set, range(run.rank, len(val_set), run.world))
    else:
        run.train_loader = make_loader(run.train_set, run.batch_size, cfg.RANDOMIZE_TRAIN_SET,
                                       args.workers, pin, seed=args.seed)
        val_part = val_set
    if run.val_items:
        run.val_loader = make_loader(val_part, run.batch_size, False, args.workers, pin, seed=args.seed)


def restore_progress(run):
    """Log, best epoch and random state of a resumed run."""
    resume = run.resume
    run.start_epoch = cfg.EPOCH_START
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
            lr = learning_rate(cfg.LEARNING_RATE, epoch, run.args.epochs, cfg.LR_DESCENT)
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


def mix_batches(batch_size, rng):
    """The original's batch augmentation (MULTI_LABEL), only for reasonably full batches."""
    def mix(x, y):
        if x.shape[0] >= batch_size // 2:
            return batch_augment(x, y, cfg.MEAN_TARGETS_PER_IMAGE, rng)
        return x, y
    return mix


def train_one_epoch(run, epoch):
    """One pass over this process's training share; returns [loss sum, batches, unreadable]."""
    run.train_set.set_epoch(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    mix = mix_batches(run.batch_size, run.np_rng) if run.multi_label else None
    with tqdm(total=len(run.train_loader), desc=f'EPOCH {epoch}', unit='batch', leave=False,
              disable=not run.main_process) as bar:
        train_loss, batches, bad = train_epoch(
            run.net, run.train_loader, run.optimizer, run.device, run.precision, run.multi_label,
            cfg.L2_WEIGHT, batch_transform=mix, channels_last=run.channels_last, progress=bar,
            agree=run.agree)
    if run.world > 1:
        # DDP keeps the weights equal; batch-norm statistics are made equal here
        for buffer in run.module.buffers():
            dist.broadcast(buffer, src=0)
    return [train_loss * batches, batches, bad]


def validate(run):
    """Validation sums of this process (see model.training.evaluate), or None without a validation set."""
    if run.val_loader is None:
        return None
    binary_acc = run.multi_label and cfg.VAL_HAS_MULTI_LABEL
    # as in the original, VAL_HAS_MULTI_LABEL alone mixes validation batches;
    # the same mixing every epoch
    mix = None
    if cfg.VAL_HAS_MULTI_LABEL:
        mix = mix_batches(run.batch_size, np.random.default_rng([run.args.seed, 2, run.rank]))
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
                if -1 in cfg.SNAPSHOT_EPOCHS or epoch in cfg.SNAPSHOT_EPOCHS else None)
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
    except (TrainError, CheckpointError) as e:
        sys.exit(f'ERROR: {e}')
    except KeyboardInterrupt:  # before the first epoch: nothing to save
        print('INTERRUPTED', file=sys.stderr)
        return 130
    return 130 if result['interrupted'] else 0


if __name__ == '__main__':
    sys.exit(main())
