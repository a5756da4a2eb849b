"""How many intra-op threads the network and how many loader processes the decoding get
for inference (AED_test, AED_eval).

torch starts one thread per physical core. For a small network each layer is
a fraction of a millisecond of work, so splitting it buys little; when another
process keeps a core busy, every layer waits for the thread that shares the
busy core, and a 2 ms/spec demo model took 58 ms/spec on a 2-core machine.
The rule: one thread for a small network; otherwise every core, never more
than torch's own default. The decoding workers need no core of their own
beside a large network: on a CPU they spend about 1 ms per window where the
paper's network spends 80 ms or more, and reserving a core for them made
AED_test 1.6x slower than the bare network on 2 cores.

    threads = pick_threads(0, (128, 64), 16, available_cores())   # -> 1
    threads = pick_threads(0, (512, 256), 64, 16)                  # -> 16
    workers = decoding_workers(0, files=40, on_cpu=True, cores=2)   # -> 1
"""
import os

from model.net import CONV_BLOCKS, DENSE_UNITS, flat_size

# Below this many multiply-accumulates per window one thread is faster. Forward
# passes at batch 32 on a shared 2-core CPU, 1 thread vs 2: the demo preset
# (128x64, 16 filters, 16 M) 1.8 vs 14.0 ms/spec; 256x128 with 32 filters (0.23 G)
# 16.8 vs 28.0; the paper's 512x256 with 64 filters (3.6 G) 205 vs 191
SMALL_MODEL_MACS = 1e9


def available_cores():
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def forward_macs(im_size, filters, im_dim=1, num_classes=10):
    """Multiply-accumulates of one window's forward pass through AEDNet (im_size = (W, H))."""
    w, h = im_size
    channels, macs = im_dim, 0
    for mult, kernel, stride in CONV_BLOCKS:
        w, h = -(-w // stride), -(-h // stride)  # 'same' padding
        macs += w * h * filters * mult * channels * kernel * kernel
        channels = filters * mult
        w, h = w // 2, h // 2  # 2x2 max-pool
    return macs + flat_size(im_size, filters) * DENSE_UNITS + DENSE_UNITS * (DENSE_UNITS + num_classes)


def default_threads(im_size, filters, cores, cap=None):
    """Threads for a network of this size: 1 when small, else every core (<= cap)."""
    if forward_macs(im_size, filters) < SMALL_MODEL_MACS:
        return 1
    threads = max(1, int(cores))
    return min(threads, cap) if cap else threads


def pick_threads(requested, im_size, filters, cores, cap=None, omp_env=None):
    """The --threads value to use: requested when > 0; None (leave torch's setting) when
    requested is 0 and the user set OMP_NUM_THREADS (omp_env); else default_threads."""
    if requested and requested > 0:
        return int(requested)
    if omp_env:
        return None
    return default_threads(im_size, filters, cores, cap)


def decoding_workers(requested, files, on_cpu, cores):
    """Loader processes decoding the files: requested when > 0; else none for one file on a CPU
    (decoding is a sliver of the network's time, not worth a process start), else cores - 1
    between 1 and 8. Never more than files."""
    if not requested:
        requested = 0 if files == 1 and on_cpu else max(1, min(8, cores - 1))
    return min(requested, files)
