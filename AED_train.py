"""Train the paper's CNN on class folders of spectrogram images.

Each epoch prints one line (train loss, validation loss and accuracy, learning
rate, time), rewrites the CSV log and the training-curve plot, draws the
confusion matrix and saves snapshots; at the end the best epoch's weights are
saved as AED_<RUN_NAME>_model_epoch_<E>.pt and AED_<RUN_NAME>_model_best.pt.

    python AED_train.py
    python AED_train.py --dataset dataset/train/spec --run-name Demo --im-size 128 64 --filters 16 --epochs 10
    python AED_train.py --resume model/AED_Demo_last.pt --epochs 20
    torchrun --nproc_per_node=4 AED_train.py --run-name Urban4gpu

BATCH_SIZE larger than the training set is clamped to its size with a
warning (a small dataset is legitimate). Under torchrun, BATCH_SIZE is per
process and only the first process prints and writes files.
"""
import argparse
import math
import os
import sys
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
from model.checkpoint import (CheckpointError, build_model, clean_state_dict, load_checkpoint,
                              load_weights, resolve_model_path, save_checkpoint)
from model.data import DatasetError, SpecDataset, batch_augment, build_cache, make_loader, parse_dataset
from model.metrics import class_metrics, plot_confusion_matrix
from model.net import AEDNet, count_params, flat_size, weighted_layers
from model.training import (Precision, Timer, configure_backend, evaluate, learning_rate,
                            make_optimizer, plot_training_curves, rng_state, select_device,
                            set_learning_rate, set_rng_state, train_epoch, write_epoch_log)

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


def train(args):
    """Run the whole training; returns a dict with net (unwrapped), best_epoch,
    max_acc, log rows and interrupted. Raises TrainError, CheckpointError."""
    check_settings(args)
    ddp = distributed_env(os.environ)
    rank, world, local_rank = ddp or (0, 1, 0)
    main_process = rank == 0

    def say(msg):
        if main_process:
            tqdm.write(msg, file=sys.stdout)

    def warn(msg):
        if main_process:
            tqdm.write(f'WARNING: {msg}', file=sys.stderr)

    try:
        device = select_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise TrainError(str(e)) from None
    if device.type == 'cuda' and ddp:
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    configure_backend(device, args.deterministic)

    resume = load_resume(args.resume) if args.resume else None
    run_name = resume['run_name'] if resume else args.run_name

    # ---------------------------------------------------------------- dataset
    try:
        classes, train_items, val_items, stats = parse_dataset(
            args.dataset, cfg.MIN_SAMPLES_PER_CLASS, cfg.MAX_SAMPLES_PER_CLASS,
            cfg.SORT_CLASSES_ALPHABETICALLY, cfg.VAL_SPLIT, args.seed)
    except DatasetError as e:
        raise TrainError(str(e)) from None
    if not train_items:
        raise TrainError(f'no training images left in {args.dataset} after the validation split')
    say(f'CLASSES: {len(classes)}')
    say(f'CLASS LABELS: {sorted(stats.items(), key=lambda kv: kv[1])}')
    say(f'TRAINING IMAGES: {len(train_items)}')
    say(f'VALIDATION IMAGES: {len(val_items)}')
    if not val_items:
        say('NO VALIDATION SET (VAL_SPLIT = 0): training on all images; '
            'the best epoch is the one with the lowest train loss')
    if resume and list(resume['classes']) != list(classes):
        raise TrainError(f'{args.resume} was trained on classes {list(resume["classes"])}, '
                         f'but {args.dataset} holds {classes}')
    batch_size = args.batch_size
    per_process = -(-len(train_items) // world)
    if batch_size > per_process:
        warn(f'batch size {batch_size} is larger than the training set '
             f'({per_process} images per process); using {per_process}')
        batch_size = per_process

    # ---------------------------------------------------------------- network
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng([args.seed, rank])
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
        net = AEDNet(len(classes), im_size, im_dim, filters, dropout, nonlinearity, cfg.INIT_GAIN)
    if ddp:
        # DDP starts every process from rank 0's weights; dropout masks should differ per process
        torch.manual_seed(args.seed + rank)
    say(f'MODEL HAS {weighted_layers(net)} WEIGHTED LAYERS')
    say(f'MODEL HAS {count_params(net)} PARAMS')
    if args.pretrained and not resume:
        path = resolve_model_path(args.pretrained, args.model_path)
        load_weights(net, load_checkpoint(path), cfg.LOAD_OUTPUT_LAYER, source=str(path))
        say(f'IMPORTED MODEL PARAMS FROM {path}'
            + ('' if cfg.LOAD_OUTPUT_LAYER else ' (ALL BUT THE OUTPUT LAYER)'))
    elif args.pretrained:
        warn(f'--pretrained {args.pretrained} ignored: resuming {args.resume}')

    meta = {'classes': list(classes), 'run_name': run_name, 'im_size': list(im_size),
            'im_dim': im_dim, 'filters': filters, 'dropout': dropout, 'nonlinearity': nonlinearity,
            'multi_label': bool(cfg.MULTI_LABEL),
            # what AED_spec.py recorded for these images, else config.py's settings
            'spec': read_spec_settings(args.dataset) or {
                'length': cfg.SPEC_LENGTH, 'overlap': cfg.SPEC_OVERLAP,
                'sample_rate': cfg.SAMPLE_RATE, 'resample': cfg.RESAMPLE_METHOD}}

    channels_last = device.type == 'cuda'
    net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
    precision = Precision(device, cfg.MIXED_PRECISION)
    optimizer = make_optimizer(cfg.OPTIMIZER, net.parameters(),
                               learning_rate(cfg.LEARNING_RATE, cfg.EPOCH_START, args.epochs, cfg.LR_DESCENT))
    if resume:
        optimizer.load_state_dict(resume['optimizer'])
        if resume.get('scaler'):
            precision.scaler.load_state_dict(resume['scaler'])
    say(f'DEVICE: {device} ({precision}), {world} PROCESS(ES), BATCH SIZE {batch_size}')

    if ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    try:
        module = net
        if ddp:
            net = DistributedDataParallel(net, device_ids=[device.index] if device.type == 'cuda' else None)
        result = _fit(args, net, module, optimizer, precision, device, channels_last, classes,
                      train_items, val_items, batch_size, meta, run_name, resume, np_rng,
                      rank, world, say, warn)
        if ddp:
            dist.barrier()  # no process tears its group down while another still uses it
        return result
    finally:
        if ddp:
            # the DDP reducer holds the process group: freeing it after the group is
            # destroyed could hang in gloo's destructor (seen in the 2-process test)
            del net
            dist.destroy_process_group()


def _fit(args, net, module, optimizer, precision, device, channels_last, classes, train_items,
         val_items, batch_size, meta, run_name, resume, np_rng, rank, world, say, warn):
    """The epoch loop (net may be DDP-wrapped; module is the bare network)."""
    main_process = rank == 0
    num_classes = len(classes)
    im_size, im_dim = tuple(meta['im_size']), meta['im_dim']
    cache = None
    if cfg.USE_CACHE:
        cache = build_cache(train_items + val_items, im_size, im_dim, workers=max(1, args.workers),
                            progress=main_process)
    train_set = SpecDataset(train_items, num_classes, im_size, im_dim, cfg.IM_AUGMENTATION or None,
                            seed=args.seed, cache=cache)
    val_set = SpecDataset(val_items, num_classes, im_size, im_dim, None, seed=args.seed, cache=cache)
    pin = device.type == 'cuda'
    if world > 1:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank,
                                     shuffle=cfg.RANDOMIZE_TRAIN_SET, seed=args.seed)
        train_loader = make_loader(train_set, batch_size, False, args.workers, pin, sampler=sampler,
                                   seed=args.seed)
        # every process validates its own unpadded share; the sums are added up
        val_part = Subset(val_set, range(rank, len(val_set), world))
    else:
        sampler = None
        train_loader = make_loader(train_set, batch_size, cfg.RANDOMIZE_TRAIN_SET, args.workers, pin,
                                   seed=args.seed)
        val_part = val_set
    val_loader = None
    if val_items:
        val_loader = make_loader(val_part, batch_size, False, args.workers, pin, seed=args.seed)

    multi_label = bool(cfg.MULTI_LABEL)
    binary_acc = multi_label and cfg.VAL_HAS_MULTI_LABEL

    def mix_train(x, y):
        # port of the original's batch augmentation call: only for reasonably full batches
        if x.shape[0] >= batch_size // 2:
            return batch_augment(x, y, cfg.MEAN_TARGETS_PER_IMAGE, np_rng)
        return x, y

    def mix_val_factory():
        val_rng = np.random.default_rng([args.seed, 2, rank])  # same mixing every epoch

        def mix(x, y):
            if x.shape[0] >= batch_size // 2:
                return batch_augment(x, y, cfg.MEAN_TARGETS_PER_IMAGE, val_rng)
            return x, y
        return mix

    model_dir = Path(args.model_path)
    log_path = ROOT / cfg.LOG_PATH / f'{run_name}.csv'
    curves_path = ROOT / cfg.LOG_PATH / f'{run_name}_curves.png'
    cm_dir = ROOT / cfg.CONFMATRIX_PATH
    last_path = model_dir / f'AED_{run_name}_last.pt'

    rows, best_state, best_epoch, max_acc, best_loss = [], None, 0, -1.0, math.inf
    start_epoch = cfg.EPOCH_START
    if resume:
        rows = list(resume.get('log', []))
        best_epoch, max_acc = resume['best_epoch'], resume['max_acc']
        best_loss = resume['best_loss']
        best_state = resume.get('best_state') or clean_state_dict(module.state_dict())
        start_epoch = resume['epoch'] + 1
        set_rng_state(resume['rng'], np_rng)
        say(f'RESUMING {run_name} AT EPOCH {start_epoch}')
    if start_epoch > args.epochs:
        warn(f'nothing to train: the run already reached epoch {start_epoch - 1} of {args.epochs}')

    timer = Timer(device)
    interrupted = False
    epoch = start_epoch - 1
    say('START TRAINING...')
    for epoch in range(start_epoch, args.epochs + 1):
        try:
            start = timer.now()
            lr = learning_rate(cfg.LEARNING_RATE, epoch, args.epochs, cfg.LR_DESCENT)
            set_learning_rate(optimizer, lr)
            train_set.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            with tqdm(total=len(train_loader), desc=f'EPOCH {epoch}', unit='batch', leave=False,
                      disable=not main_process) as bar:
                train_loss, batches, bad = train_epoch(
                    net, train_loader, optimizer, device, precision, multi_label, cfg.L2_WEIGHT,
                    batch_transform=mix_train if multi_label else None,
                    channels_last=channels_last, progress=bar)
            if world > 1:
                # DDP keeps the weights equal; batch-norm statistics are made equal here
                for buffer in module.buffers():
                    dist.broadcast(buffer, src=0)
            totals = [train_loss * batches, batches, bad]
            if val_loader is not None:
                stats = evaluate(module, val_loader, device, precision, num_classes, multi_label,
                                 binary_acc, batch_transform=mix_val_factory() if binary_acc else None,
                                 channels_last=channels_last)
                packed = torch.cat([torch.tensor(totals, dtype=torch.float64, device=device),
                                    torch.stack([stats['loss_sum'], stats['correct'], stats['total']]),
                                    torch.tensor([stats['images'], stats['bad']], dtype=torch.float64,
                                                 device=device),
                                    stats['cm'].flatten()])
            else:
                packed = torch.tensor(totals, dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(packed)  # sums of all processes
            packed = packed.cpu().numpy()
            end = timer.now()

            batches = int(packed[1])
            if not batches:
                raise TrainError(f'epoch {epoch}: no training batch could be loaded '
                                 f'(are the images in {args.dataset} readable?)')
            train_loss = packed[0] / batches
            bad = int(packed[2])
            row = {'epoch': epoch, 'train_loss': round(float(train_loss), 6), 'lr': lr,
                   'time_s': round(end - start, 1), 'bad_images': bad}
            if val_loader is not None:
                val_loss_sum, correct, total, images, val_bad = packed[3:8]
                cm = packed[8:].reshape(num_classes, num_classes).astype(np.int64)
                bad += int(val_bad)
                row['bad_images'] = bad
                val_loss = val_loss_sum / images if images else float('nan')
                acc = val_percent(correct / total) if total else 0.0
                row.update(val_loss=round(float(val_loss), 6), val_accuracy=acc)
                say(f'EPOCH {epoch} TRAIN LOSS: {train_loss:.6f} VAL LOSS: {val_loss:.6f} '
                    f'VAL ACCURACY: {acc} % LR: {lr:.6g} TIME: {row["time_s"]} s')
                improved = acc >= max_acc  # ties go to the later epoch, as in the original
            else:
                cm = None
                say(f'EPOCH {epoch} TRAIN LOSS: {train_loss:.6f} VAL LOSS: - VAL ACCURACY: - % '
                    f'LR: {lr:.6g} TIME: {row["time_s"]} s')
                improved = train_loss <= best_loss
            if bad:
                warn(f'epoch {epoch}: {bad} unreadable image(s) skipped')
            rows.append(row)
            if improved:
                # a COPY of the weights: the original kept a reference to the live net (defect 1)
                best_state = clean_state_dict(module.state_dict())
                best_epoch = epoch
                if cm is not None:
                    max_acc = row['val_accuracy']
                else:
                    best_loss = train_loss

            if main_process:
                write_epoch_log(log_path, rows)
                plot_training_curves(rows, curves_path, f'{run_name}: epochs {rows[0]["epoch"]}-{epoch}')
                if cm is not None:
                    precision_c, _, f1 = class_metrics(cm)
                    title = (f'Confusion Matrix\n{run_name} - Epoch {epoch}\n'
                             f'Train Samples: {len(train_items)} Validation Samples: {len(val_items)}\n'
                             f'mP: {precision_c.mean():.4f} mF1: {f1.mean():.4f}')
                    plot_confusion_matrix(cm, classes, cm_dir / f'{run_name}_{epoch}.png', title,
                                          cfg.NORMALIZE_CONFMATRIX, cfg.CONFMATRIX_MAX_CLASSES)
                if -1 in cfg.SNAPSHOT_EPOCHS or epoch in cfg.SNAPSHOT_EPOCHS:
                    path = save_checkpoint(model_dir / f'AED_{run_name}_model_epoch_{epoch}.pt',
                                           module, {**meta, 'epoch': epoch})
                    say(f'SNAPSHOT SAVED: {path}')
                save_checkpoint(last_path, module, {**meta, 'epoch': epoch}, resume=True,
                                optimizer=optimizer.state_dict(), scaler=precision.scaler.state_dict(),
                                best_state=None if best_epoch == epoch else best_state,
                                best_epoch=best_epoch, max_acc=max_acc, best_loss=float(best_loss),
                                log=rows, rng=rng_state(np_rng))
        except KeyboardInterrupt:
            interrupted = True
            warn(f'training interrupted in epoch {epoch}')
            break

    say('TRAINING DONE!')
    say(f'MAX ACC: {max_acc}' if val_loader is not None else f'MIN TRAIN LOSS: {best_loss:.6f}')
    if best_state is not None and (not interrupted or cfg.SAVE_AFTER_INTERRUPT):
        module.load_state_dict(best_state)
        if main_process:
            best_meta = {**meta, 'epoch': best_epoch}
            save_checkpoint(model_dir / f'AED_{run_name}_model_epoch_{best_epoch}.pt', module, best_meta)
            path = save_checkpoint(model_dir / f'AED_{run_name}_model_best.pt', module, best_meta)
            say(f'BEST MODEL (EPOCH {best_epoch}) SAVED: {path}')
    elif best_state is None:
        warn('no epoch finished, no model saved')
    return {'net': module, 'best_epoch': best_epoch, 'max_acc': max_acc, 'log': rows,
            'interrupted': interrupted}


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
