"""Train the paper's CNN on class folders of spectrogram images.

    python AED_train.py
    python AED_train.py --dataset dataset/train/spec --run-name Demo --im-size 128 64 --filters 16 --epochs 10
    python AED_train.py --resume model/AED_Demo_last.pt
    torchrun --nproc_per_node=4 AED_train.py --run-name Urban4gpu
"""
import argparse
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from model import config_checks as check
from model.audio import read_spec_settings, spec_defaults
from model.checkpoint import CheckpointError, detached_copy, load_weights, resolve_model_path, save_checkpoint
from model.data import DatasetError, SpecDataset, batch_augment, build_cache, make_loader, parse_dataset
from model.events import thresholds_path
from model.metrics import class_metrics, plot_confusion_matrix
from model.net import AEDNet, count_params, weighted_layers
from model.run_settings import (CONFIG_SETTINGS, CONSTANTS, Progress, SettingsError, restore_progress,
                                resume_record, settle, settle_background, training_meta)
from model.training import (BackgroundWriter, Precision, add_up, all_can_step, clock, configure_backend,
                            describe_schedule, distributed_env, evaluate, learning_rate, make_optimizer,
                            maybe_compile, percent, plot_training_curves, rng_states, select_device,
                            train_epoch, write_epoch_log)

try:
    import config as cfg
except Exception as e:  # noqa: BLE001 -- the user's config.py: any error in it is one ERROR line
    check.config_failed(e)

ROOT = Path(__file__).resolve().parent


def parse_args(argv):
    """The flags and config.py's other constants in one namespace, plus args.explicit: the flags given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', type=Path, default=ROOT / cfg.DATASET_PATH, help='class folders of images')
    p.add_argument('--epochs', type=int, default=cfg.EPOCHS, help='last epoch to train')
    p.add_argument('--batch-size', type=int, default=cfg.BATCH_SIZE, help='images per batch and process')
    p.add_argument('--im-size', type=int, nargs=2, metavar=('W', 'H'), default=list(cfg.IM_SIZE),
                   help='network input width and height')
    p.add_argument('--filters', type=int, default=cfg.FILTERS,
                   help='filters of the first convolution (later blocks use 2x..16x)')
    p.add_argument('--run-name', default=cfg.RUN_NAME, help='name in checkpoint, log and plot file names')
    p.add_argument('--model-path', type=Path, default=ROOT / cfg.MODEL_PATH,
                   help='folder for checkpoints (and to look up --pretrained names)')
    p.add_argument('--log-path', type=Path, default=ROOT / cfg.LOG_PATH,
                   help='folder for the CSV epoch log and the training-curve plot')
    p.add_argument('--confmatrix-path', type=Path, default=ROOT / cfg.CONFMATRIX_PATH,
                   help='folder for the confusion-matrix plots')
    p.add_argument('--pretrained', default=cfg.PRETRAINED_MODEL,
                   help='checkpoint to start from: a path, or a file name under --model-path')
    p.add_argument('--resume', type=Path, default=None,
                   help="continue a run from its AED_<RUN_NAME>_last.pt with its settings; flags override")
    p.add_argument('--device', default=cfg.DEVICE, help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'")
    p.add_argument('--workers', type=int, default=cfg.TRAIN_WORKERS, help='data loader processes')
    p.add_argument('--seed', type=int, default=cfg.RANDOM_SEED, help='random seed')
    p.add_argument('--deterministic', action='store_true', help='reproducible runs: deterministic algorithms')
    p.add_argument('--compile', action=argparse.BooleanOptionalAction, default=cfg.COMPILE,
                   help='train with torch.compile (falls back with a warning where unavailable)')
    p.add_argument('--background-classes', nargs='*', default=cfg.BACKGROUND_CLASSES, metavar='NAME',
                   help='classes of recordings without events: mixed under the others, never events')
    mix = cfg.BACKGROUND_MIX
    p.add_argument('--background-mix', type=float, metavar='PROB',
                   default=mix.get('prob') if isinstance(mix, dict) else None,
                   help="probability that a training image of an event is laid onto a background image "
                        "(BACKGROUND_MIX's 'prob'; 0 = off)")
    args = p.parse_args(argv)
    prob = args.background_mix
    # parsed again into a namespace that holds every name, so argparse sets no defaults
    unset = object()
    given = p.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(args)}))
    args.explicit = {name for name, value in vars(given).items() if value is not unset}
    for key, name in CONFIG_SETTINGS.items():
        setattr(args, key, getattr(cfg, name))
    for key in CONSTANTS:
        setattr(args, key, getattr(cfg, key.upper()))
    if 'background_mix' in args.explicit and isinstance(mix, dict):
        args.background_mix = {**mix, 'prob': prob}  # one setting: BACKGROUND_MIX with the flag's 'prob'
    return args


def main_process():
    """False in every torchrun process but the first: only the first prints and writes files."""
    return (distributed_env(os.environ) or (0,))[0] == 0


def say(line, file=None):
    """A line from the first process: results on stdout, else file (tqdm.write keeps a bar intact)."""
    if main_process():
        tqdm.write(line, file=file or sys.stdout)


def warn(line):
    say(f'WARNING: {line}', sys.stderr)


def run_path(args, kind, epoch=None):
    """Where the run writes, absolute: 'log', 'curves', 'confmatrix', 'last', 'snapshot', 'best'."""
    models, logs, cms = (Path(p).absolute() for p in (args.model_path, args.log_path, args.confmatrix_path))
    name = args.run_name
    return {'log': logs / f'{name}.csv', 'curves': logs / f'{name}_curves.png',
            'confmatrix': cms / f'{name}_{epoch}.png', 'last': models / f'AED_{name}_last.pt',
            'snapshot': models / f'AED_{name}_model_epoch_{epoch}.pt',
            'best': models / f'AED_{name}_model_best.pt'}[kind]


@dataclass
class Job:
    """What the epoch loop runs on, made once by setup()."""
    args: argparse.Namespace
    device: torch.device
    module: torch.nn.Module       # the bare network: validation and checkpoints
    net: torch.nn.Module          # module, wrapped by DDP and --compile where they apply
    optimizer: torch.optim.Optimizer
    precision: Precision
    train_loader: object
    val_loader: object            # None without a validation set
    meta: dict                    # checkpoint metadata
    np_rng: np.random.Generator   # batch mixing (MULTI_LABEL)
    agree: object                 # bool, or all_can_step() under torchrun


def train(args):
    """The run: the original's module-level code, from parseDataset to the last saveModel.
    Returns {'net', 'interrupted'}; raises SettingsError, DatasetError or CheckpointError."""
    resume, pretrained = settle(args, warn)
    job, writer = None, BackgroundWriter()
    try:
        job = setup(args, resume, pretrained)
        best, start = Progress(), args.epoch_start
        if resume:
            best, start = restore_progress(resume, args.epochs, job.np_rng, warn)
            say(f'RESUMING {args.run_name} AT EPOCH {start}')
        say('START TRAINING...')
        epoch, interrupted = start - 1, False
        for epoch in range(start, args.epochs + 1):
            try:
                began = clock(job.device)
                lr = learning_rate(args.learning_rate, epoch, args.epochs, args.lr_descent)
                for group in job.optimizer.param_groups:
                    group['lr'] = lr
                sums = add_up(train_one_epoch(job, epoch), validate(job), job.device)
                cm = report(job, best, epoch, lr, sums, clock(job.device) - began)
                rng = rng_states(job.np_rng)
                if main_process():
                    save_epoch(job, best, epoch, cm, rng, writer)
            except KeyboardInterrupt:
                interrupted = True
                break
        finish(job, best, epoch, start, interrupted, writer)
        return {'net': job.module, 'interrupted': interrupted}
    finally:
        writer.close()  # every file of the last finished epoch is on disk
        if dist.is_initialized():
            # the DDP reducer holds the process group: freeing it after the group is
            # destroyed could hang in gloo's destructor (seen in the 2-process test)
            if job is not None:
                job.net = None
            dist.destroy_process_group()


def setup(args, resume, pretrained):
    """Device, data, network and optimiser; joins torchrun's process group where there is one."""
    for title, path in (('MODEL PATH', args.model_path), ('LOG PATH', args.log_path),
                        ('CONFMATRIX PATH', args.confmatrix_path)):
        say(f'{title}: {Path(path).absolute()}')
    say('LEARNING RATE: ' + describe_schedule(args.learning_rate, args.epoch_start, args.epochs,
                                              args.lr_descent))
    rank, world, local_rank = distributed_env(os.environ) or (0, 1, 0)
    device = select_device(args.device)
    if device.type == 'cuda' and world > 1:
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    configure_backend(device, args.deterministic)
    classes, train_items, val_items = read_dataset(args, resume)
    batch_size = min(args.batch_size, -(-len(train_items) // world))
    if batch_size < args.batch_size:
        warn(f'batch size {args.batch_size} is larger than the training set '
             f'({batch_size} images per process); using {batch_size}')
    module, meta = build_network(args, classes, train_items, val_items, resume, pretrained, rank, world)
    cuda = device.type == 'cuda'
    module = module.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    precision = Precision(device, args.mixed_precision)
    optimizer = make_optimizer(args.optimizer, module.parameters(), learning_rate(
        args.learning_rate, args.epoch_start, args.epochs, args.lr_descent))
    if resume:
        optimizer.load_state_dict(resume['optimizer'])
        if resume.get('scaler'):
            precision.scaler.load_state_dict(resume['scaler'])
    say(f'DEVICE: {device} ({precision}), {world} PROCESS(ES), BATCH SIZE {batch_size}')
    loaders = make_loaders(args, classes, train_items, val_items, batch_size, cuda, rank, world)
    net, agree = module, bool
    if world > 1:
        dist.init_process_group('nccl' if cuda else 'gloo')
        agree = all_can_step()
        net = DistributedDataParallel(module, device_ids=[device.index] if cuda else None)
    net = maybe_compile(net, args.compile, warn)
    return Job(args, device, module, net, optimizer, precision, *loaders, meta,
               np.random.default_rng([args.seed, rank]), agree)


def read_dataset(args, resume):
    """Port of AED_train.parseDataset's lines: classes, train and val items."""
    classes, train_items, val_items, stats = parse_dataset(
        args.dataset, args.min_samples_per_class, args.max_samples_per_class, args.sort_classes,
        args.val_split, args.seed)
    say(f'CLASSES: {len(classes)}')
    say(f'CLASS LABELS: {sorted(stats.items(), key=lambda kv: kv[1])}')
    say(f'TRAINING IMAGES: {len(train_items)}')
    say(f'VALIDATION IMAGES: {len(val_items)}')
    if not val_items:
        say('NO VALIDATION SET (VAL_SPLIT = 0): training on all images; '
            'the best epoch is the one with the lowest train loss')
    if resume and resume['classes'] != classes:
        raise SettingsError(f'{args.resume} was trained on classes {resume["classes"]}, '
                            f'but {args.dataset} holds {classes}')
    say(settle_background(args, classes, train_items))
    return classes, train_items, val_items


def build_network(args, classes, train_items, val_items, resume, pretrained, rank, world):
    """Port of AED_train.buildModel and loadModel: the network and its checkpoint metadata."""
    torch.manual_seed(args.seed)
    net = AEDNet(len(classes), args.im_size, args.im_dim, args.filters, args.dropout,
                 args.nonlinearity, args.init_gain)
    if resume:
        try:
            net.load_state_dict(resume['state_dict'])
        except RuntimeError:
            raise CheckpointError(f'{args.resume}: weights do not match the architecture '
                                  f'it describes') from None
    if world > 1:
        # DDP starts every process from rank 0's weights; dropout masks should differ per process
        torch.manual_seed(args.seed + rank)
    say(f'MODEL HAS {weighted_layers(net)} WEIGHTED LAYERS')
    say(f'MODEL HAS {count_params(net)} PARAMS')
    if pretrained:
        path = resolve_model_path(args.pretrained, args.model_path)
        load_weights(net, pretrained, args.load_output_layer, source=str(path))
        say(f'IMPORTED MODEL PARAMS FROM {path}' + ('' if args.load_output_layer
                                                   else ' (ALL BUT THE OUTPUT LAYER)'))
    meta = {'classes': classes, 'run_name': args.run_name, 'im_size': args.im_size,
            'im_dim': args.im_dim, 'filters': args.filters, 'dropout': args.dropout,
            'nonlinearity': args.nonlinearity, 'multi_label': args.multi_label,
            # what AED_spec.py recorded for these images, else config.py's settings
            'spec': read_spec_settings(args.dataset) or spec_defaults(
                args.spec_length, args.spec_overlap, args.sample_rate, args.resample_method),
            'training': training_meta(args, classes, train_items, val_items),
            # what AED_test.py --events and AED_eval.py never report as events
            'background_classes': [c for c in classes if c in args.background_classes]}
    return net, meta


def make_loaders(args, classes, train_items, val_items, batch_size, pin, rank, world):
    """Port of AED_train.getDatasetChunk: this process's training and validation (or None) loaders;
    training images only are mixed onto background images."""
    cache = (build_cache(train_items + val_items, args.im_size, args.im_dim, args.workers, main_process())
             if args.use_cache else None)
    background = [k for k, c in enumerate(classes) if c in args.background_classes]
    train_set = SpecDataset(train_items, len(classes), args.im_size, args.im_dim, args.augmentation,
                            args.seed, cache, replace_unreadable=True, background=background,
                            mix=args.background_mix)
    sampler = DistributedSampler(train_set, world, rank, shuffle=args.randomize_train_set, seed=args.seed)
    train_loader = make_loader(train_set, batch_size, args.workers, sampler, pin)
    if not val_items:
        return train_loader, None
    val_set = SpecDataset(val_items, len(classes), args.im_size, args.im_dim, seed=args.seed, cache=cache)
    # every process validates its own unpadded share; the sums are added up
    val_part = Subset(val_set, range(rank, len(val_set), world))
    return train_loader, make_loader(val_part, batch_size, args.workers, pin_memory=pin)


def train_one_epoch(job, epoch):
    """One pass over this process's training share; returns [loss sum, batches, unreadable]."""
    args, loader = job.args, job.train_loader
    loader.sampler.set_epoch(epoch)  # each epoch its own shuffle...
    loader.dataset.set_epoch(epoch)  # ...and its own augmentation
    mix = partial(batch_augment, mean_targets=args.mean_targets_per_image, rng=job.np_rng,
                  min_images=loader.batch_size // 2) if args.multi_label else None
    # port of AED_train.showProgress
    with tqdm(total=len(loader), desc=f'EPOCH {epoch}', unit='batch', leave=False,
              disable=not main_process()) as bar:
        totals = train_epoch(job.net, loader, job.optimizer, job.device, job.precision, args.multi_label,
                             args.l2_weight, mix, job.device.type == 'cuda', bar, job.agree)
    if dist.is_initialized():
        # DDP keeps the weights equal; batch-norm statistics are made equal here
        for buffer in job.module.buffers():
            dist.broadcast(buffer, src=0)
    return totals


def validate(job):
    """This process's validation sums (model.training.evaluate), or None without a validation set."""
    args, loader = job.args, job.val_loader
    if loader is None:
        return None
    # as in the original, VAL_HAS_MULTI_LABEL alone mixes validation batches; the same mixing every epoch
    rng = np.random.default_rng([args.seed, 2, (distributed_env(os.environ) or (0,))[0]])
    mix = partial(batch_augment, mean_targets=args.mean_targets_per_image, rng=rng,
                  min_images=loader.batch_size // 2) if args.val_has_multi_label else None
    return evaluate(job.module, loader, job.device, job.precision, len(job.meta['classes']),
                    args.multi_label, args.multi_label and args.val_has_multi_label,
                    batch_transform=mix, channels_last=job.device.type == 'cuda')


def report(job, best, epoch, lr, sums, seconds):
    """Print the epoch line, log the row, keep the best weights; returns the confusion matrix or None."""
    batches, bad = int(sums[1]), int(sums[2])
    if not batches:
        raise DatasetError(f'epoch {epoch}: no training batch could be loaded '
                         f'(are the images in {job.args.dataset} readable?)')
    train_loss, cm, val_loss, acc = sums[0] / batches, None, '-', '-'
    row = {'epoch': epoch, 'train_loss': round(float(train_loss), 6), 'lr': lr, 'time_s': round(seconds, 1)}
    if job.val_loader is not None:
        val_loss_sum, acc_sum, val_batches, val_bad = sums[3:7]
        k = len(job.meta['classes'])
        cm, bad = sums[7:].reshape(k, k).astype(np.int64), bad + int(val_bad)
        # means of the batch means, as the original averaged them
        val_loss = val_loss_sum / val_batches if val_batches else float('nan')
        acc = percent(acc_sum / val_batches) if val_batches else 0.0
        row.update(val_loss=round(float(val_loss), 6), val_accuracy=acc)
        val_loss = f'{val_loss:.6f}'
    best.rows.append({**row, 'bad_images': bad})
    say(f'EPOCH {epoch} TRAIN LOSS: {train_loss:.6f} VAL LOSS: {val_loss} VAL ACCURACY: {acc} % '
        f'LR: {lr:.6g} TIME: {row["time_s"]} s')
    if bad:
        warn(f'epoch {epoch}: {bad} unreadable image(s) skipped')
    # ties go to the later epoch, as in the original; without validation the lowest train loss
    if acc >= best.max_acc if cm is not None else train_loss <= best.loss:
        # a COPY of the weights: the original kept a reference to the live net (defect 1)
        best.state, best.epoch = detached_copy(job.module.state_dict()), epoch
        if cm is not None:
            best.max_acc = acc
        else:
            best.loss = train_loss
    return cm


def save_epoch(job, best, epoch, cm, rng, writer):
    """Port of the per-epoch showConfusionMatrix and saveModel: the epoch's files go to the
    background writer, copied here so that the next epoch cannot change them mid-write."""
    args = job.args
    # the best state is a CPU copy of this epoch's weights already when it improved
    weights = best.state if best.epoch == epoch else detached_copy(job.module.state_dict())
    meta = {**job.meta, 'epoch': epoch}
    snapshot = (run_path(args, 'snapshot', epoch)
                if -1 in args.snapshot_epochs or epoch in args.snapshot_epochs else None)
    resume = resume_record(best, epoch, job.optimizer, job.precision.scaler, rng)
    writer.submit(write_epoch_files, args, epoch, cm, list(best.rows), weights, meta, snapshot, resume)
    if snapshot:
        say(f'SNAPSHOT SAVED: {snapshot}')


def write_epoch_files(args, epoch, cm, rows, weights, meta, snapshot, resume):
    """(writer thread) The files of one epoch; the resume checkpoint last, replaced atomically."""
    write_epoch_log(run_path(args, 'log'), rows)
    plot_training_curves(rows, run_path(args, 'curves'),
                         f'{args.run_name}: epochs {rows[0]["epoch"]}-{epoch}')
    if cm is not None:
        precision_c, _, f1 = class_metrics(cm)
        counts = meta['training']['class_counts']
        title = (f'Confusion Matrix\n{args.run_name} - Epoch {epoch}\n'
                 f'Train Samples: {sum(counts["train"].values())} '
                 f'Validation Samples: {sum(counts["val"].values())}\n'
                 f'mP: {precision_c.mean():.4f} mF1: {f1.mean():.4f}')
        plot_confusion_matrix(cm, meta['classes'], run_path(args, 'confmatrix', epoch), title,
                              args.normalize_confmatrix, args.confmatrix_max_classes)
    if snapshot:
        save_checkpoint(snapshot, weights, meta)
    save_checkpoint(run_path(args, 'last'), weights, meta, **resume)


def finish(job, best, epoch, start, interrupted, writer):
    """Say how the run ended; save the best epoch's weights (after Ctrl-C if SAVE_AFTER_INTERRUPT)."""
    args = job.args
    writer.wait()  # the last epoch's files, the snapshot below may be one of them
    if interrupted:
        # the progress is in this run's _last.pt once an epoch finished, else in the one it resumed
        last = run_path(args, 'last') if epoch > start else args.resume
        say(f'TRAINING INTERRUPTED IN EPOCH {epoch}', sys.stderr)
        if last:
            script = 'AED_train.py' if Path.cwd() == ROOT else ROOT / 'AED_train.py'
            say(f'PROGRESS SAVED: {Path(last).absolute()}', sys.stderr)
            say(f'RESUME WITH: python {script} --resume {Path(last).absolute()}', sys.stderr)
    else:
        say('TRAINING DONE!')
    say(f'MAX ACC: {best.max_acc}' if job.val_loader is not None else f'MIN TRAIN LOSS: {best.loss:.6f}')
    if best.state is None:
        warn('no epoch finished, no model saved')
    elif not interrupted or args.save_after_interrupt:
        job.module.load_state_dict(best.state)
        if main_process():
            meta = {**job.meta, 'epoch': best.epoch}
            save_checkpoint(run_path(args, 'snapshot', best.epoch), job.module, meta)
            path = save_checkpoint(run_path(args, 'best'), job.module, meta)
            say(f'BEST MODEL (EPOCH {best.epoch}) SAVED: {path}')
            tuned = thresholds_path(path)
            if tuned.is_file():  # AED_test.py would apply them to the new weights
                tuned.unlink()
                warn(f'{tuned}: thresholds tuned for the model this one replaced, removed')
    if dist.is_initialized():
        dist.barrier()  # no process tears its group down while another still uses it


def main(argv=None):
    args = parse_args(argv)
    try:
        result = train(args)
    except SettingsError as e:
        check.exit_on(e.args)
    except (DatasetError, CheckpointError) as e:
        sys.exit(f'ERROR: {e}')
    except KeyboardInterrupt:  # before the first epoch: nothing to save
        print('INTERRUPTED', file=sys.stderr)
        return 130
    return 130 if result['interrupted'] else 0


if __name__ == '__main__':
    sys.exit(main())
