"""Training helpers for AED_train.py: schedule, loss, accuracy, optimiser, loops, logs."""
import bisect
import csv
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def learning_rate(schedule, epoch, epochs, descent):
    """The rate of an epoch from a {epoch: rate} schedule, by the original's rule. With descent:
    the linear curve through the points, keys sorted (defect 12), and (epochs, last rate), read
    at max(first key, epoch - 1). Without: the rate of the last key <= epoch."""
    keys = sorted(schedule)
    rates = [float(schedule[k]) for k in keys]
    if not descent:
        return rates[max(0, bisect.bisect_right(keys, epoch) - 1)]
    points = sorted(list(zip(keys, rates)) + [(epochs, rates[-1])], key=lambda p: p[0])
    xs, ys = zip(*points)
    return float(np.interp(max(keys[0], epoch - 1), xs, ys))


def describe_schedule(schedule, first, last, descent):
    """The LEARNING RATE line: how a schedule runs from epoch first to epoch last."""
    keys = sorted(schedule)
    shown = {k: float(schedule[k]) for k in keys}
    start, end = (learning_rate(schedule, e, last, descent) for e in (first, last))
    if keys[-1] > last:
        note = f' fitted to {last} epochs' if descent else f'; keys after epoch {last} not reached'
    else:
        note = f'; final rate from epoch {keys[-1] + 1}' if descent and keys[-1] < last else ''
    kind = 'linear' if descent else 'steps'
    return f'epoch {first} {start:.4g} -> epoch {last} {end:.4g} ({kind}; schedule {shown}{note})'


def make_optimizer(name, params, rate):
    """'adam' (beta1 = 0.5, as the original) or 'nesterov' (momentum 0.9)."""
    if name == 'adam':
        return torch.optim.Adam(params, lr=rate, betas=(0.5, 0.999))
    return torch.optim.SGD(params, lr=rate, momentum=0.9, nesterov=True)


def compute_loss(logits, targets, multi_label):
    """Port of AED_train.calc_loss and calc_loss_multi, in float32 (safe inside autocast)."""
    logits, targets = logits.float(), targets.float()
    if not multi_label:
        return F.cross_entropy(logits, targets)
    p = torch.sigmoid(logits).clamp(1e-7, 1.0 - 1e-7)  # the original's clip
    # written out because F.binary_cross_entropy refuses to run under autocast
    return -(targets * torch.log(p) + (1.0 - targets) * torch.log1p(-p)).mean()


def l2_penalty(net):
    """Sum of squared weights of conv and dense layers (no biases, no batch norm)."""
    return sum(m.weight.pow(2).sum() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def percent(fraction):
    """Accuracy in % truncated to 0.1, as the original printed and compared it."""
    return math.floor(fraction * 1000 + 1e-6) / 10.0


def accuracy(logits, targets, binary=False):
    """Port of AED_train.calc_accuracy and, with binary, calc_accuracy_multi: a tensor."""
    if binary:
        return ((torch.sigmoid(logits.float()) > 0.5) == (targets > 0.5)).double().mean()
    return (logits.argmax(dim=1) == targets.argmax(dim=1)).double().mean()


def distributed_env(environ):
    """(rank, world size, local rank) when started by torchrun with several processes, else None."""
    world = int(environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return None
    return int(environ['RANK']), world, int(environ.get('LOCAL_RANK', '0'))


def select_device(name='auto'):
    """'auto' picks CUDA, then Apple MPS, then CPU; anything else is passed to torch.device."""
    available = {'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available(),
                 'cpu': True}
    if name == 'auto':
        return torch.device(next(kind for kind, ok in available.items() if ok))
    device = torch.device(name)
    if not available.get(device.type, True):
        raise ValueError(f'device {name} requested but {device.type.upper()} is not available')
    return device


class Precision:
    """Mixed precision on CUDA: bf16 autocast where the GPU has it natively, else fp16 with a
    GradScaler. Elsewhere (or with enabled=False) plain float32."""

    def __init__(self, device, enabled=True):
        self.dtype = None
        if enabled and device.type == 'cuda':
            # emulated bf16 (T4, V100) is slower than fp16
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            self.dtype = torch.bfloat16 if native else torch.float16
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.dtype == torch.float16)

    def autocast(self):
        return nullcontext() if self.dtype is None else torch.autocast('cuda', dtype=self.dtype)

    def __str__(self):
        return {None: 'float32', torch.bfloat16: 'bf16 autocast',
                torch.float16: 'fp16 autocast + GradScaler'}[self.dtype]


def configure_backend(device, deterministic):
    """cudnn autotuning for speed, or deterministic algorithms for reproducible runs."""
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        # cuDNN convolutions included; warn_only: an op without a deterministic kernel warns
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def maybe_compile(net, enabled, warn):
    """torch.compile(net) when enabled; net itself, with a warning, where it cannot build here."""
    if not enabled:
        return net
    try:
        return torch.compile(net)
    except (RuntimeError, NotImplementedError) as e:  # e.g. unsupported Python or platform
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warn(f'torch.compile is unavailable ({reason}); running uncompiled')
        return net


def to_device(x, device, channels_last=False):
    """An image batch (B, C, H, W) on device, optionally in channels-last layout."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(net, x, y, optimizer, precision, multi_label, l2_weight=0.0):
    """One optimiser step on a batch already on the device; returns the loss tensor (detached)."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = net(x)
    loss = compute_loss(logits, y, multi_label)
    if l2_weight:
        loss = loss + l2_weight * l2_penalty(net)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return loss.detach()


def train_epoch(net, loader, optimizer, device, precision, multi_label, l2_weight, batch_transform,
                channels_last, progress, agree=bool):
    """The original's loop over train_net; returns (sum of the batch losses, batches, unreadable).
    Batches of fewer than 2 images are skipped (batch norm cannot normalise one), under DDP by
    every process together (agree=all_can_step()), else their all-reduces fall out of step."""
    net.train()
    loss_sum = torch.zeros((), device=device)
    batches = bad = 0
    for x, y, n_bad in loader:
        bad += int(n_bad)
        if batch_transform is not None and x.shape[0]:
            x, y = batch_transform(x, y)
        if agree(x.shape[0] >= 2):
            x = to_device(x, device, channels_last)
            y = y.to(device, non_blocking=True)
            loss_sum += train_step(net, x, y, optimizer, precision, multi_label, l2_weight)
            batches += 1
        progress.update()
        # reading the loss syncs the GPU, so only now and then
        if batches and batches % 10 == 0:
            progress.set_postfix(loss=f'{loss_sum.item() / batches:.4f}')
    return loss_sum.item(), batches, bad


def all_can_step():
    """agree() for train_epoch under torch.distributed: a MIN all-reduce of one CPU flag per
    batch, through gloo where the default group is NCCL (the flag never waits for the GPU)."""
    group = dist.new_group(backend='gloo') if dist.get_backend() == 'nccl' else None

    def agree(ok):
        flag = torch.tensor([int(ok)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        return bool(flag.item())
    return agree


@torch.no_grad()
def evaluate(net, loader, device, precision, num_classes, multi_label, binary_accuracy,
             batch_transform=None, channels_last=False):
    """The original's loop over test_net; returns sums that processes can add: loss_sum and acc_sum
    (of the batch means, as the original averaged them), batches, bad (unreadable), cm (K, K)."""
    net.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    acc_sum = torch.zeros((), device=device, dtype=torch.float64)
    cm = torch.zeros(num_classes, num_classes, device=device, dtype=torch.float64)
    batches = bad = 0
    for x, y, n_bad in loader:
        bad += int(n_bad)
        if batch_transform is not None and x.shape[0]:
            x, y = batch_transform(x, y)
        if not x.shape[0]:
            continue
        x = to_device(x, device, channels_last)
        y = y.to(device, non_blocking=True)
        with precision.autocast():
            logits = net(x).float()
        loss_sum += compute_loss(logits, y, multi_label).double()
        acc_sum += accuracy(logits, y, binary_accuracy)
        # one-hot product instead of bincount: deterministic on CUDA too
        truth = F.one_hot(y.argmax(dim=1), num_classes).double()
        guess = F.one_hot(logits.argmax(dim=1), num_classes).double()
        cm += truth.T @ guess
        batches += 1
    return {'loss_sum': loss_sum, 'acc_sum': acc_sum, 'cm': cm, 'batches': batches, 'bad': bad}


def add_up(totals, stats, device):
    """train_epoch's and evaluate's (or None) results of all processes as one numpy vector: [train
    loss sum, batches, unreadable, val loss sum, val accuracy sum, val batches, val unreadable, cm...]."""
    packed = torch.tensor(totals, dtype=torch.float64, device=device)
    if stats is not None:
        counts = torch.tensor([stats['batches'], stats['bad']], dtype=torch.float64, device=device)
        packed = torch.cat([packed, torch.stack([stats['loss_sum'], stats['acc_sum']]), counts,
                            stats['cm'].flatten()])
    if dist.is_initialized():
        dist.all_reduce(packed)  # sums of all processes
    return packed.cpu().numpy()


def clock(device):
    """Wall-clock seconds, after the queued GPU work is done."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


class BackgroundWriter:
    """File writes on one thread, so training does not wait for them. At most one job is pending;
    its error is raised at the next call. Pass it copies: nothing it reads may change."""

    def __init__(self):
        self._pool, self._pending = ThreadPoolExecutor(1, thread_name_prefix='aed-writer'), None

    def submit(self, fn, *args):
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self):
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self):
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def write_epoch_log(path, rows):
    """(Re)write the CSV log of all epochs so far, atomically: a resumed run keeps it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.part')
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, extrasaction='ignore', fieldnames=(
            'epoch', 'train_loss', 'val_loss', 'val_accuracy', 'lr', 'time_s', 'bad_images'))
        writer.writeheader()
        writer.writerows(rows)  # None and missing values are written empty
    os.replace(tmp, path)


def plot_training_curves(rows, path, title):
    """Loss (train, val) and validation accuracy per epoch as one PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from model.metrics import save_figure

    epochs = [r['epoch'] for r in rows]

    def series(key):
        return [np.nan if r.get(key) is None else float(r[key]) for r in rows]

    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_loss.plot(epochs, series('train_loss'), 'o-', label='train')
    ax_loss.plot(epochs, series('val_loss'), 's-', label='validation')
    ax_loss.legend()
    ax_acc.plot(epochs, series('val_accuracy'), 'o-', color='tab:green')
    ax_acc.set_ylim(0, 100)
    for ax, label in ((ax_loss, 'loss'), (ax_acc, 'validation accuracy (%)')):
        ax.set(xlabel='epoch', ylabel=label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    return save_figure(fig, path)


def rng_states(np_rng):
    """[torch (CPU and CUDA) and numpy Generator states] of every process, in rank order."""
    state = {'torch': torch.get_rng_state(), 'numpy': np_rng.bit_generator.state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def set_rng_state(state, np_rng):
    torch.set_rng_state(state['torch'])
    np_rng.bit_generator.state = state['numpy']
    if state.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'][:torch.cuda.device_count()])
