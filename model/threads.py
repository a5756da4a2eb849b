"""How many threads the network and how many loader processes the decoding get for inference:
one thread for a small network (with another process on a core, every layer of a threaded one
waits for it: the demo model took 58 ms/spec instead of 2), else every core, none kept for the
decoding workers (reserving one made AED_test 1.6x slower beside the paper's network)."""
from model.net import CONV_BLOCKS, DENSE_UNITS, flat_size

# Below this many multiply-accumulates per window one thread is faster. Forward
# passes at batch 32 on a shared 2-core CPU, 1 thread vs 2: the demo preset
# (128x64, 16 filters, 16 M) 1.8 vs 14.0 ms/spec; 256x128 with 32 filters (0.23 G)
# 16.8 vs 28.0; the paper's 512x256 with 64 filters (3.6 G) 205 vs 191
SMALL_MODEL_MACS = 1e9


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


def pick_threads(requested, im_size, filters, cores, cap=None, omp_env=None):
    """--threads when > 0; else None (keep torch's setting) when the user set OMP_NUM_THREADS;
    else 1 for a small network and every core (at least 1, at most cap) for a large one."""
    if requested > 0:
        return requested
    if omp_env:
        return None
    if forward_macs(im_size, filters) < SMALL_MODEL_MACS:
        return 1
    threads = max(1, cores)
    return min(threads, cap) if cap else threads


def decoding_workers(requested, files, on_cpu, cores):
    """Loader processes: requested when > 0; else none for one file on a CPU (not worth a process
    start), else cores - 1 between 1 and 8. Never more than files."""
    if not requested:
        requested = 0 if files == 1 and on_cpu else max(1, min(8, cores - 1))
    return min(requested, files)
