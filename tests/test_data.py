"""Tests for model/data.py: dataset split, image loading, augmentation and batching."""
import cv2
import numpy as np
import pytest
import torch

from torch.utils.data.distributed import DistributedSampler

from model.data import (IMAGE_EXTENSIONS, DatasetError, ImageError, SpecDataset, augment,
                        augmentation_problems, batch_augment, build_cache, collate, load_image,
                        make_loader, parse_dataset)

W, H = 64, 32  # tiny (width, height) images keep the file fast


def write_png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode('.png', img)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def random_grey(seed, shape=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def dataset_dir(tmp_path):
    """Classes a (5), b (3), c (4) plus files and folders that must be ignored."""
    root = tmp_path / 'spec'
    for c, n in (('a', 5), ('b', 3), ('c', 4)):
        for k in range(n):
            write_png(root / c / f'{c}_{k}.png', random_grey(hash((c, k)) % 1000))
    (root / 'a' / '.a_9.png.part').write_bytes(b'partial')  # AED_spec's temp file
    (root / 'a' / 'notes.txt').write_text('not an image')
    write_png(root / '.hidden' / 'x.png', random_grey(0))  # hidden folder: not a class
    (root / 'README.md').write_text('stray file in the root')
    return root


# ----------------------------------------------------------------- parse_dataset

def test_split_sizes_labels_and_stats(dataset_dir):
    classes, train, val, stats = parse_dataset(dataset_dir, val_split=0.25)
    assert classes == ['a', 'b', 'c']
    assert stats == {'a': 5, 'b': 3, 'c': 4}
    assert len(val) == int(12 * 0.25) and len(train) == 12 - len(val)
    items = train + val
    assert len(set(p for p, _ in items)) == 12
    assert all(classes[label] == p.parent.name for p, label in items)
    # hidden files, the .part file, notes.txt and the hidden folder are all left out
    assert all(p.suffix in IMAGE_EXTENSIONS and not p.name.startswith('.') for p, _ in items)


def test_val_split_zero_trains_on_everything(dataset_dir):
    _, train, val, _ = parse_dataset(dataset_dir, val_split=0)
    assert len(train) == 12 and val == []


def test_max_samples_takes_first_sorted_files(dataset_dir):
    _, train, val, stats = parse_dataset(dataset_dir, max_samples=2, val_split=0)
    assert stats == {'a': 2, 'b': 2, 'c': 2}
    names = sorted(p.name for p, _ in train)
    assert names == ['a_0.png', 'a_1.png', 'b_0.png', 'b_1.png', 'c_0.png', 'c_1.png']


def test_min_samples_oversamples_with_repeats(dataset_dir):
    classes, train, val, stats = parse_dataset(dataset_dir, min_samples=6, val_split=0.2)
    assert stats == {'a': 6, 'b': 6, 'c': 6}
    items = train + val
    assert len(items) == 18 and len(val) == int(18 * 0.2)
    for label, c in enumerate(classes):
        paths = [p for p, lab in items if lab == label]
        assert len(paths) == 6 and all(p.parent.name == c for p in paths)
    assert len(set(p for p, _ in items)) == 12  # the extra 6 are repeats


def test_same_seed_same_split_other_seed_other_order(dataset_dir):
    first = parse_dataset(dataset_dir, min_samples=4, seed=7)
    assert parse_dataset(dataset_dir, min_samples=4, seed=7) == first
    other = parse_dataset(dataset_dir, min_samples=4, seed=8)
    assert other[1] + other[2] != first[1] + first[2]


def test_unsorted_classes_are_a_seeded_permutation(tmp_path):
    names = [f'class{k}' for k in range(6)]
    for n in names:
        write_png(tmp_path / n / 'x.png', random_grey(1))
    orders = [parse_dataset(tmp_path, sort_classes=False, seed=s)[0] for s in range(4)]
    assert all(sorted(o) == names for o in orders)
    assert any(o != names for o in orders)
    assert parse_dataset(tmp_path, sort_classes=False, seed=2)[0] == orders[2]
    _, train, _, _ = parse_dataset(tmp_path, sort_classes=False, seed=2, val_split=0)
    assert all(orders[2][label] == p.parent.name for p, label in train)


@pytest.mark.parametrize('setup, kwargs, message', [
    ('missing', {}, 'cannot list'),
    ('one_class', {}, 'at least 2'),
    ('empty_class', {}, 'empty_one'),
])
def test_dataset_errors(tmp_path, setup, kwargs, message):
    root = tmp_path / 'spec'
    if setup != 'missing':
        write_png(root / 'a' / 'x.png', random_grey(1))
    if setup in ('empty_class', 'ok'):
        write_png(root / 'b' / 'x.png', random_grey(2))
    if setup == 'empty_class':
        (root / 'empty_one').mkdir()
        (root / 'empty_one' / 'readme.txt').write_text('no images here')
    with pytest.raises(DatasetError, match=message):
        parse_dataset(root, **kwargs)


# ----------------------------------------------------------------- load_image

def test_load_grey_exact_values(tmp_path):
    img = random_grey(3)
    out = load_image(write_png(tmp_path / 'g.png', img), (W, H), 1)
    assert out.shape == (1, H, W) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], (img / 255.).astype(np.float32))


def test_load_colour_as_grey_and_grey_as_colour(tmp_path):
    colour = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = write_png(tmp_path / 'c.png', colour)
    grey = load_image(path, (W, H), 1)
    expected = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY) / np.float32(255)
    np.testing.assert_array_equal(grey[0], expected)
    bgr = load_image(path, (W, H), 3)
    assert bgr.shape == (3, H, W)
    np.testing.assert_array_equal(bgr[0], colour[:, :, 0] / np.float32(255))  # blue first, as cv2
    from_grey = load_image(write_png(tmp_path / 'g.png', random_grey(5)), (W, H), 3)
    assert from_grey.shape == (3, H, W)
    assert np.array_equal(from_grey[0], from_grey[1]) and np.array_equal(from_grey[1], from_grey[2])


def test_load_resizes_like_cv2(tmp_path):
    img = random_grey(6, (50, 100))
    out = load_image(write_png(tmp_path / 'big.png', img), (W, H), 1)
    assert out.shape == (1, H, W)
    np.testing.assert_array_equal(out[0], cv2.resize(img, (W, H)) / np.float32(255))


def test_load_unicode_path(tmp_path):
    img = random_grey(7)
    path = write_png(tmp_path / 'spéc_日本語' / 'schrei_ü.png', img)
    np.testing.assert_array_equal(load_image(path, (W, H), 1)[0], img / np.float32(255))


@pytest.mark.parametrize('content', [None, b'', b'\x89PNG\r\n\x1a\n truncated', b'plain text'])
def test_bad_files_raise_image_error(tmp_path, content):
    path = tmp_path / 'bad.png'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError):
        load_image(path, (W, H), 1)


# ----------------------------------------------------------------- augment

SETTINGS = {'crop': 0.2, 'flip': 1, 'roll': (0.3, 0.3), 'mean': 0.5, 'noise': 0.01,
            'brightness': (0.3, 0.6)}
CLIPPED = {'crop', 'flip', 'roll', 'noise', 'brightness'}  # stay in [0, 1]
RANDOM_VALUE = {'crop', 'roll', 'noise', 'brightness'}  # flip and mean have a fixed value


@pytest.fixture
def image():
    return random_grey(8)[None] / np.float32(255)  # (1, H, W)


@pytest.mark.parametrize('name', sorted(SETTINGS))
def test_each_augmentation(name, image):
    before = image.copy()
    aug = {name: [1.0, SETTINGS[name]]}
    out = augment(image, np.random.default_rng(0), aug)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.flags.c_contiguous and out is not image
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(image, before)  # the input is left alone
    if name in CLIPPED:
        assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out, augment(image, np.random.default_rng(0), aug))
    if name in RANDOM_VALUE:
        assert not np.array_equal(out, augment(image, np.random.default_rng(1), aug))
    off = augment(image, np.random.default_rng(0), {name: [0.0, SETTINGS[name]]})
    np.testing.assert_array_equal(off, image)


def test_augment_returns_its_input_only_when_nothing_ran(image):
    rng = np.random.default_rng(0)
    assert augment(image, rng, {'roll': [0.0, (0.1, 0.1)]}) is image
    assert augment(image, rng, {}) is image
    before = image.copy()
    for name, entry in SETTINGS.items():  # every step makes a new image: the input never changes
        out = augment(image, rng, {name: [1.0, entry]})
        assert out is not image and np.array_equal(image, before), name


def test_all_augmentations_colour(image):
    colour = np.repeat(image, 3, axis=0)
    aug = {name: [1.0, v] for name, v in SETTINGS.items()}
    out = augment(colour, np.random.default_rng(3), aug)
    assert out.shape == (3, H, W) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1


def roll_offsets(img, out):
    """(dy, dx) with out == np.roll(img, (dy, dx)) in (-H/2, H/2] x (-W/2, W/2], or None."""
    for dy in range(H):
        for dx in range(W):
            if np.array_equal(out, np.roll(img, (dy, dx), axis=(1, 2))):
                return (dy if dy <= H // 2 else dy - H), (dx if dx <= W // 2 else dx - W)
    return None


def test_roll_is_a_bounded_wrap_around_shift():
    img = np.random.default_rng(5).random((1, H, W), dtype=np.float32)
    aug = {'roll': [1.0, (0.25, 0.1)]}  # (x fraction, y fraction)
    shifts = set()
    for seed in range(12):
        out = augment(img, np.random.default_rng(seed), aug)
        # the same pixel values, only moved
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(img, axis=None))
        dy, dx = roll_offsets(img, out)
        assert abs(dy) <= H * 0.1 and abs(dx) <= W * 0.25
        shifts.add((dy, dx))
    # random in both directions on both axes
    assert {np.sign(dx) for _, dx in shifts} >= {-1, 1} and {np.sign(dy) for dy, _ in shifts} >= {-1, 1}
    for seed in range(4):  # a zero fraction keeps that axis still
        rows_only = augment(img, np.random.default_rng(seed), {'roll': [1.0, (0.0, 0.5)]})
        cols_only = augment(img, np.random.default_rng(seed), {'roll': [1.0, (0.5, 0.0)]})
        assert roll_offsets(img, rows_only)[1] == 0 and roll_offsets(img, cols_only)[0] == 0


@pytest.mark.parametrize('code', [1, 0, -1])
def test_flip_is_an_involution(image, code):
    aug = {'flip': [1.0, code]}
    once = augment(image, np.random.default_rng(0), aug)
    assert not np.array_equal(once, image)
    np.testing.assert_array_equal(augment(once, np.random.default_rng(1), aug), image)
    np.testing.assert_array_equal(np.sort(once, axis=None), np.sort(image, axis=None))


def test_noise_stays_in_range_and_changes_pixels(image):
    for seed in range(5):
        out = augment(image, np.random.default_rng(seed), {'noise': [1.0, 0.01]})
        assert 0 <= out.min() and out.max() <= 1
        changed = np.mean(out != image)
        assert changed > 0.5  # Gaussian noise moves nearly every pixel (some clip to 0 or 1)
        assert abs(float(out.mean() - image.mean())) < 0.05  # zero-mean apart from clipping


@pytest.mark.parametrize('code, rows, cols', [(1, False, True), (0, True, False), (-1, True, True)])
def test_flip_codes_follow_cv2(image, code, rows, cols):
    out = augment(image, np.random.default_rng(0), {'flip': [1.0, code]})
    np.testing.assert_array_equal(out[0], cv2.flip(image[0], code))
    expected = image[:, ::-1 if rows else 1, ::-1 if cols else 1]
    np.testing.assert_array_equal(out, expected)


def test_crop_cuts_border_and_resizes_back():
    framed = np.zeros((1, H, W), dtype=np.float32)
    framed[:, 0, :] = framed[:, -1, :] = framed[:, :, 0] = framed[:, :, -1] = 1.0
    out = augment(framed, np.random.default_rng(2), {'crop': [1.0, 0.2]})
    assert out.shape == framed.shape and out.max() == 0  # the 1-pixel frame is cut away
    # frac * size < 1 pixel on both axes: nothing to cut (the original crashed here)
    tiny = np.random.default_rng(0).random((1, 4, 4), dtype=np.float32)
    out = augment(tiny, np.random.default_rng(0), {'crop': [1.0, 0.1]})
    np.testing.assert_array_equal(out, tiny)


def test_mean_brightness_noise_parameters(image):
    out = augment(image, np.random.default_rng(0), {'mean': [1.0, 0.5]})
    np.testing.assert_allclose(out, image + image.mean() * 0.5, rtol=1e-6)
    out = augment(image, np.random.default_rng(0), {'brightness': [1.0, (0.3, 0.6)]})
    inside = image > 0.05
    ratio = out[inside] / image[inside]
    assert np.ptp(ratio) < 1e-5 and 0.3 <= ratio[0] <= 0.6
    out = augment(image, np.random.default_rng(0), {'noise': [1.0, 0.04]})
    diff = (out - image)[(out > 0) & (out < 1)]
    assert 0 < diff.std() <= 0.2 + 1e-3  # std drawn from U(0, sqrt(0.04))


@pytest.mark.parametrize('aug, word', [
    ({'rotate': [0.5, 10]}, 'rotate'),
    ({'roll': [1.5, (0, 0.1)]}, 'roll'),
    ({'roll': [0.5, 0.1]}, 'roll'),
    ({'crop': [0.5, 0.6]}, 'crop'),
    ({'brightness': [0.5, (1.2, 0.5)]}, 'brightness'),
    ({'noise': [0.5, -1]}, 'noise'),
])
def test_bad_augmentation_settings_name_the_key(aug, word):
    (line,) = augmentation_problems(aug)
    assert word in line


def test_every_bad_augmentation_is_its_own_line():
    aug = {'rolll': [0.5, (0, 0.1)], 'roll': [0.5, (0, 0.1)], 'blur': [0.5, 3], 'flip': [0.5, float('inf')],
           'mean': [0.5, float('nan')]}
    problems = augmentation_problems(aug)
    assert len(problems) == 4 and all(problems), problems
    for word, line in zip(("'rolll'", "'blur'", "'flip'", "'mean'"), problems):
        assert word in line, (word, line)
    assert augmentation_problems({'roll': [0.5, (0, 0.1)], 'noise': [0.1, 0.01]}) == []


# ----------------------------------------------------------------- batch_augment

def batch(labels, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((len(labels), 1, 8, 16), dtype=np.float32)
    y = np.zeros((len(labels), k), dtype=np.float32)
    y[np.arange(len(labels)), labels] = 1
    return x, y


def test_batch_augment_single_class_terminates_unchanged():
    x, y = batch([2] * 16, 5)
    x0, y0 = x.copy(), y.copy()
    x, y = batch_augment(x, y, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize('as_torch', [False, True])
def test_batch_augment_reaches_target_mean(as_torch):
    labels = np.arange(16) % 5
    x, y = batch(labels, 5)
    y0 = y.copy()
    if as_torch:
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    x, y = batch_augment(x, y, 3, np.random.default_rng(1))
    x, y = np.asarray(x), np.asarray(y)
    assert y.sum(axis=1).mean() >= 3
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert np.all(y >= y0)  # targets are only ever added
    mixed = y.sum(axis=1) > 1
    assert mixed.any()
    assert np.allclose(x[mixed].min(axis=(1, 2, 3)), 0)
    assert np.allclose(x[mixed].max(axis=(1, 2, 3)), 1)


class CountingRng:
    """A numpy Generator that counts the pairs batch_augment draws."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), 0

    def choice(self, *args, **kwargs):
        self.draws += 1
        return self.rng.choice(*args, **kwargs)


def test_batch_augment_unreachable_target_constant_images_and_the_step_limit():
    x, y = batch([0, 1, 2, 0], 3)
    x0, y0 = x.copy(), y.copy()
    rng = CountingRng(0)
    batch_augment(x, y, 4, rng)  # 4 > the batch's 3 classes: the original looped forever
    assert rng.draws == 0 and np.array_equal(x, x0) and np.array_equal(y, y0)
    x[:] = 0.0  # constant images must not turn into NaN
    x, y = batch_augment(x, y, 3, np.random.default_rng(0))
    assert np.all(y == 1) and np.isfinite(x).all() and not x.any()
    x, y = batch(np.arange(16) % 8, 8)
    rng = CountingRng(0)
    batch_augment(x, y, 8, rng, max_steps=3)
    assert rng.draws == 3 and 16 < y.sum() <= 16 + 3  # stopped after three steps


def test_batch_augment_draws_any_pair_as_the_original():
    # image 0 already holds every label: a pair (0, j) adds nothing to its targets, yet the
    # original drew it like any other pair and mixed image j into image 0
    changed = []
    for seed in range(5):
        x, y = batch([0, 1, 2, 3, 0, 1, 2, 3], 4, seed=seed)
        y[0] = 1
        x0 = x.copy()
        batch_augment(x, y, 2.5, np.random.default_rng(seed))
        assert y.sum(axis=1).mean() >= 2.5
        changed.append(not np.array_equal(x[0], x0[0]))
    assert any(changed)


# ----------------------------------------------------------------- dataset and loader

@pytest.fixture
def items(tmp_path):
    """8 good PNGs of two classes (one listed twice) and a corrupt one."""
    out = []
    for k in range(8):
        out.append((write_png(tmp_path / f'c{k % 2}' / f'{k}.png', random_grey(20 + k)), k % 2))
    bad = tmp_path / 'c0' / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
    return out + [(bad, 0), out[0]]


AUG = {'roll': [0.5, (0.1, 0.1)], 'noise': [0.5, 0.01], 'flip': [0.5, 1]}


def test_an_unreadable_image_drops_only_itself(items, capsys):
    # validation: the item has no image, and collate trims it from its batch (the original's way)
    ds = SpecDataset(items, 2, (W, H), 1, augmentation=AUG)
    x, y, bad = ds[8]
    assert x is None and bad == 1
    assert 'broken.png' in capsys.readouterr().err
    ds[8]
    assert capsys.readouterr().err == ''  # one warning per file
    x, y, bad = ds[1]
    assert bad == 0 and x.dtype == torch.float32 and y.tolist() == [0.0, 1.0]
    xb, yb, n_bad = collate([ds[i] for i in range(len(ds))])
    assert n_bad == 1 and xb.shape == (9, 1, H, W) and yb.shape == (9, 2)
    xb, yb, n_bad = collate([ds[8]])
    assert n_bad == 1 and len(xb) == 0 and len(yb) == 0
    # training: the next readable image takes its place (item 9 repeats item 0's file),
    # with its own target, so the batch keeps its size
    ds = SpecDataset(items, 2, (W, H), 1, replace_unreadable=True)
    x, y, bad = ds[8]
    assert bad == 1 and torch.equal(x, ds[9][0]) and torch.equal(y, ds[9][1])
    xb, yb, n_bad = collate([ds[i] for i in range(len(ds))])
    assert n_bad == 1 and xb.shape == (10, 1, H, W) and yb.shape == (10, 2)
    # with nothing readable left, the item is dropped rather than invented
    ds = SpecDataset([items[8]] * 3, 2, (W, H), 1, replace_unreadable=True)
    assert [ds[i][0] for i in range(3)] == [None] * 3


def test_dataset_augmentation_depends_on_epoch_and_index_only(items):
    ds = SpecDataset(items, 2, (W, H), 1, augmentation={'noise': [1.0, 0.01]}, seed=5)
    ds.set_epoch(2)
    a = ds[3][0]
    ds[0], ds[7]
    assert torch.equal(a, ds[3][0])
    ds.set_epoch(3)
    assert not torch.equal(a, ds[3][0])
    # the repeated item (index 9 lists the same file as index 0) is augmented differently
    assert not torch.equal(ds[0][0], ds[9][0])


def epoch_batches(loader, dataset, epoch):
    dataset.set_epoch(epoch)
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone(), n) for x, y, n in loader]


def shuffled(dataset, seed=1337):
    return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)


def test_loader_workers_give_same_batches(items, capfd):
    ds0 = SpecDataset(items, 2, (W, H), 1, augmentation=AUG)
    ds2 = SpecDataset(items, 2, (W, H), 1, augmentation=AUG)
    loader0 = make_loader(ds0, 4, 0, shuffled(ds0))
    loader2 = make_loader(ds2, 4, 2, shuffled(ds2))
    seen = []
    for epoch in (1, 2):  # epoch 2 checks that set_epoch reaches persistent workers
        b0, b2 = epoch_batches(loader0, ds0, epoch), epoch_batches(loader2, ds2, epoch)
        assert len(b0) == len(b2) == 3
        for (x0, y0, n0), (x2, y2, n2) in zip(b0, b2):
            assert torch.equal(x0, x2) and torch.equal(y0, y2) and n0 == n2
        assert sum(n for _, _, n in b0) == 1 and sum(len(x) for x, _, _ in b0) == 9
        seen.append(torch.cat([x for x, _, _ in b0]))
    assert not torch.equal(seen[0], seen[1])  # a new order and new augmentation per epoch
    assert torch.equal(epoch_batches(loader0, ds0, 1)[0][0], epoch_batches(loader2, ds2, 1)[0][0])
    assert 'broken.png' in capfd.readouterr().err


def test_cache_matches_direct_loading(items):
    cache = build_cache(items, (W, H), 1, workers=2, progress=False)
    assert len(cache.rows) == 9 and cache.images.dtype == np.uint8  # the repeat is stored once
    assert cache.images.shape == (9, 1, H, W)
    assert list(cache.errors) == [str(items[8][0])]
    plain = SpecDataset(items, 2, (W, H), 1, augmentation=AUG)
    cached = SpecDataset(items, 2, (W, H), 1, augmentation=AUG, cache=cache)
    for i in range(len(items)):
        a, b = plain[i], cached[i]
        assert a[2] == b[2] and (a[0] is b[0] is None or torch.equal(a[0], b[0]))
