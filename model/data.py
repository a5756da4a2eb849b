"""Training data: split, images (C, H, W) float32 in [0, 1], background mixing, augmentation, batches."""
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from model.mixing import draw_mix, mix_background

IMAGE_EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}


class DatasetError(Exception):
    """The dataset folder cannot be used for training; the message says why."""


class ImageError(Exception):
    """A file that cannot be loaded as an image; the message says why."""


def _class_files(folder):
    """Image files of one class folder, sorted by name (hidden and other files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in IMAGE_EXTENSIONS)


def parse_dataset(path, min_samples=-1, max_samples=None, sort_classes=True, val_split=0.1,
                  seed=1337):
    """Port of AED_train.parseDataset. Returns (classes, train, val, stats): lists of
    (image path, class index), and {class: image count} for the CLASS LABELS line."""
    root = Path(path)
    rng = np.random.default_rng(seed)
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
        files = {c: _class_files(root / c)[:max_samples] for c in classes}
    except OSError as e:
        raise DatasetError(f'cannot list {e.filename or root}: {e.strerror or e}') from None
    if len(classes) < 2:
        raise DatasetError(f'{root} holds {len(classes)} class folder(s); training needs at '
                           f'least 2 (one sub-folder of images per class)')
    if not sort_classes:
        classes = [classes[k] for k in rng.permutation(len(classes))]

    empty = [c for c in classes if not files[c]]
    if empty:
        raise DatasetError(f'class folder(s) without images in {root}: {", ".join(empty)}')

    items, stats = [], {}
    for label, c in enumerate(classes):
        c_items = [(p, label) for p in files[c]]
        # Oversampled repeats may end up in validation too, as in the original
        extra = max(0, min_samples - len(c_items))
        c_items += [c_items[k] for k in rng.integers(0, len(files[c]), extra)]
        stats[c] = len(c_items)
        items += c_items

    items = [items[k] for k in rng.permutation(len(items))]
    # slicing at n_train, not [:-n_val], so val_split=0 keeps everything (defect 5)
    n_train = len(items) - int(len(items) * val_split)
    return classes, items[:n_train], items[n_train:], stats


def read_image_uint8(path, im_size, im_dim):
    """The decoding half of AED_train.openImage: uint8 (im_dim, H, W) for im_size=(width,
    height), colours as the original's cv2.imread + cvtColor gave them; raises ImageError."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works for unicode paths on every OS
    except OSError as e:
        raise ImageError(f'cannot read file ({e.strerror or e})') from None
    if data.size == 0:
        raise ImageError('file is empty')
    try:
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR)  # 8-bit, grey or BGR
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ImageError('not a readable image')

    if img.ndim == 3 and im_dim == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif img.ndim == 2 and im_dim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    width, height = im_size
    if img.shape[:2] != (height, width):
        img = cv2.resize(img, (width, height))  # default bilinear, as the original
    if im_dim == 1:
        return img[None]  # (1, H, W)
    return np.ascontiguousarray(img.transpose(2, 0, 1))  # (3, H, W)


def to_float(img):
    """uint8 array -> float32 in [0, 1]; exactly the original's float32(img / 255.)."""
    return np.divide(img, np.float32(255), dtype=np.float32)


def load_image(path, im_size, im_dim):
    """Port of AED_train.openImage (its cache: build_cache); raises ImageError."""
    return to_float(read_image_uint8(path, im_size, im_dim))


def _is_number(v):
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and np.isfinite(v))


def _is_pair(v):
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(a) for a in v)


# The known augmentations, in the order augment() applies them: (test of the value, what it must be)
AUGMENTATIONS = {
    'crop': (lambda v: _is_number(v) and 0 <= v < 0.5, 'a fraction in [0, 0.5)'),
    'flip': (lambda v: _is_number(v) and int(v) == v,
             'a cv2 flip code (1 horizontal, 0 vertical, -1 both)'),
    'roll': (lambda v: _is_pair(v) and min(v) >= 0, '(x_fraction, y_fraction) with both >= 0'),
    'mean': (_is_number, 'a number'),
    'noise': (lambda v: _is_number(v) and v >= 0, 'a variance >= 0'),
    'brightness': (lambda v: _is_pair(v) and 0 <= v[0] <= v[1], '(low, high) with 0 <= low <= high'),
}


def augmentation_problems(augmentation):
    """One line for each bad entry of an {name: [probability, value]} dict; empty when all are fine."""
    if not augmentation:
        return []
    if not isinstance(augmentation, dict):
        return [f'augmentation must be a dict of name: [probability, value], got {augmentation!r}']
    problems = []
    for name, entry in augmentation.items():
        if name not in AUGMENTATIONS:
            problems.append(f'unknown augmentation {name!r} (known: {", ".join(AUGMENTATIONS)})')
        elif not (isinstance(entry, (list, tuple)) and len(entry) == 2 and _is_number(entry[0])
                  and 0 <= entry[0] <= 1):
            problems.append(f'augmentation {name!r} must be [probability in 0..1, value], got {entry!r}')
        elif not AUGMENTATIONS[name][0](entry[1]):
            problems.append(f'augmentation {name!r} value must be {AUGMENTATIONS[name][1]}, '
                            f'got {entry[1]!r}')
    return problems


def _crop_border(rng, size, frac):
    """Border width for one axis: 1..int(size * frac) - 1 like the original's randint,
    1 when that range is empty but a 1-pixel border fits, 0 when size * frac < 1."""
    high = int(size * frac)
    if high < 1:
        return 0
    border = 1 if high < 2 else int(rng.integers(1, high))
    return min(border, (size - 1) // 2)


def augment(img, rng, augmentation):
    """Port of AED_train.imageAugmentation: one (C, H, W) image, the steps in the original's
    order. The input is never modified: a new image where a step ran, else img itself."""
    out = img

    def draw(name):
        return name in augmentation and rng.random() < augmentation[name][0]

    _, h, w = out.shape
    if draw('crop'):
        frac = augmentation['crop'][1]
        bx, by = _crop_border(rng, w, frac), _crop_border(rng, h, frac)
        if bx or by:
            part = np.ascontiguousarray(out[:, by:h - by, bx:w - bx].transpose(1, 2, 0))
            out = np.ascontiguousarray(cv2.resize(part, (w, h)).reshape(h, w, -1).transpose(2, 0, 1))
    if draw('flip'):
        code = int(augmentation['flip'][1])
        # cv2 codes: > 0 mirrors columns, 0 mirrors rows, < 0 both
        out = np.ascontiguousarray(np.flip(out, 2 if code > 0 else 1 if code == 0 else (1, 2)))
    if draw('roll'):
        vx, vy = augmentation['roll'][1]
        dy = int(h * rng.uniform(-vy, vy))
        dx = int(w * rng.uniform(-vx, vx))
        out = np.roll(out, (dy, dx), axis=(1, 2))
    if draw('mean'):  # not clipped, as in the original
        out = out + np.float32(out.mean() * augmentation['mean'][1])
    if draw('noise'):
        std = np.float32(rng.uniform(0, augmentation['noise'][1] ** 0.5))
        out = np.clip(out + std * rng.standard_normal(out.shape, dtype=np.float32), 0.0, 1.0)
    if draw('brightness'):
        lo, hi = augmentation['brightness'][1]
        out = np.clip(out * np.float32(rng.uniform(lo, hi)), 0.0, 1.0)
    return out


def batch_augment(x, y, mean_targets, rng, min_images=2, max_steps=None):
    """Port of AED_train.getAugmentedBatches, in place on x (B, C, H, W) and y (B, K) 0/1. The
    original could loop forever (defect 6): here at most max_steps (default 20 * B), and none
    where the batch's classes are fewer than mean_targets."""
    b = len(y)
    max_steps = 20 * b if max_steps is None else max_steps
    if b < max(2, min_images) or float((y.sum(0) > 0).sum()) < mean_targets:
        return x, y
    for _ in range(max_steps):
        if float(y.sum(1).mean()) >= mean_targets:
            break
        i, j = (int(k) for k in rng.choice(b, 2, replace=False))
        x[i] += x[j]
        x[i] -= x[i].min()
        top = float(x[i].max())
        if top > 0:  # a constant image stays at zero instead of becoming NaN
            x[i] /= top
        y[i] = y[i] + y[j] - y[i] * y[j]  # logical or of 0/1 targets
    return x, y


@dataclass
class ImageCache:
    """Decoded images of a set of files (USE_CACHE), made by build_cache."""
    images: np.ndarray  # (N, C, H, W) uint8
    rows: dict          # {path string: row}
    errors: dict        # {path string: why it is unreadable}


def build_cache(items, im_size, im_dim, workers=0, progress=True):
    """Port of AED_train.openImage's dict cache, a quarter of its size (uint8: 128 KiB per
    512x256 grey image), shared by forked DataLoader workers instead of copied. Decodes in
    `workers` threads (cv2 releases the GIL)."""
    from tqdm import tqdm
    paths = list(dict.fromkeys(Path(p) for p, _ in items))
    cache = ImageCache(np.zeros((len(paths), im_dim, im_size[1], im_size[0]), dtype=np.uint8),
                       {str(p): k for k, p in enumerate(paths)}, {})

    def fill(row):
        try:
            cache.images[row] = read_image_uint8(paths[row], im_size, im_dim)
        except ImageError as e:
            cache.errors[str(paths[row])] = str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(fill, range(len(paths))), total=len(paths), unit='img', desc='CACHING IMAGES',
                  disable=not progress))
    return cache


class SpecDataset(Dataset):
    """(image, one-hot target, unreadable) items of parse_dataset's (path, class index) pairs.
    Item i of epoch e is augmented with default_rng([seed, e, i]), whatever the workers. An
    unreadable file is reported once per process; with replace_unreadable (training) the next
    readable one takes its place, else (validation) collate drops it, as the original did.
    With mix (BACKGROUND_MIX), an item of a class not in `background` (class indices) is laid
    onto an image of those classes as model.mixing draws it from default_rng([seed, e, i, 1]);
    background items stay as they are, so a window of background alone keeps that label."""

    def __init__(self, items, num_classes, im_size, im_dim, augmentation=None, seed=1337,
                 cache=None, replace_unreadable=False, background=(), mix=None):
        self.items = items
        self._one_hot = torch.eye(num_classes, dtype=torch.float32)
        self.im_size, self.im_dim = tuple(im_size), im_dim
        self.augmentation, self.seed, self.cache = augmentation or None, seed, cache
        self.replace_unreadable = replace_unreadable
        self._background = set(background)
        self._backgrounds = [k for k, (_, label) in enumerate(items) if label in self._background]
        self.mix = mix if mix and mix['prob'] > 0 and self._backgrounds else None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # reaches persistent workers
        self._unreadable = set()  # per process: each file is tried and reported once

    def set_epoch(self, epoch):
        self._epoch.fill_(int(epoch))

    def __len__(self):
        return len(self.items)

    def _read(self, k):
        """Item k's float image, or None (reported the first time) when its file is unreadable."""
        path = self.items[k][0]
        if path in self._unreadable:
            return None
        try:
            if self.cache is None:
                return load_image(path, self.im_size, self.im_dim)
            if str(path) in self.cache.errors:
                raise ImageError(self.cache.errors[str(path)])
            return to_float(self.cache.images[self.cache.rows[str(path)]])
        except ImageError as e:
            self._unreadable.add(path)
            print(f'WARNING {path}: {e}, skipped', file=sys.stderr, flush=True)
            return None

    def __getitem__(self, i):  # port of AED_train.loadImageAndTarget
        k, img = i, self._read(i)
        unreadable = int(img is None)
        if img is None and self.replace_unreadable:
            for k in (n % len(self) for n in range(i + 1, i + len(self))):
                img = self._read(k)
                if img is not None:
                    break
        if img is None:
            return None, None, unreadable
        if self.mix and self.items[k][1] not in self._background:
            img = self._mix(img, i)
        if self.augmentation:
            rng = np.random.default_rng([self.seed, int(self._epoch), i])
            img = augment(img, rng, self.augmentation)
        return torch.from_numpy(img), self._one_hot[self.items[k][1]].clone(), unreadable

    def _mix(self, img, i):
        """img laid onto a background image, or img itself (not drawn, or the background unreadable)."""
        rng = np.random.default_rng([self.seed, int(self._epoch), i, 1])  # augment's draws stay the same
        m = self.mix
        plan = draw_mix(rng, m['prob'], m['ebr_db'], len(self._backgrounds), m['partial'])
        back = None if plan is None else self._read(self._backgrounds[plan[0]])
        return img if back is None else mix_background(img, back, plan[1], plan[2])


def collate(batch):
    """[(image or None, target, unreadable)] -> (x (B, C, H, W), y (B, K), unreadable count) of
    the items with an image: getNextImageBatch's trim to the images it could read."""
    good = [(x, y) for x, y, _ in batch if x is not None]
    unreadable = sum(n for _, _, n in batch)
    if not good:
        return torch.empty(0), torch.empty(0), unreadable
    x, y = default_collate(good)  # in a worker: straight into shared memory
    return x, y, unreadable


def make_loader(dataset, batch_size, workers, sampler=None, pin_memory=False, drop_last=False):
    """Port of AED_train.getNextImageBatch: (x, y, unreadable) batches. Workers are forked on
    Linux to share an ImageCache, with cv2's threads off (a forked child can deadlock in them)."""
    kwargs = {}
    if workers > 0:
        cv2.setNumThreads(0)
        kwargs['persistent_workers'] = True
        if sys.platform.startswith('linux'):
            kwargs['multiprocessing_context'] = 'fork'
    # its own generator: starting an epoch never draws from the global one (dropout's)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last,
                      generator=torch.Generator(), **kwargs)
