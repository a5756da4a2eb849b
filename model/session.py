"""What AED_eval.py and AED_test.py both set up before predicting: the device (one GPU per
torchrun process), the model and its spectrogram settings, CPU threads, batch size and --compile."""
import os
import sys
import time
from dataclasses import dataclass, field

import soundfile as sf
import torch
from torch.overrides import TorchFunctionMode

from model import config_checks as check
from model.audio import split_bounds
from model.checkpoint import CheckpointError, checkpoint_meta, load_checkpoint, resolve_model_path
from model.inference import batch_rows, predict
from model.net import AEDNet
from model.threads import decoding_workers, pick_threads
from model.training import select_device

# With fewer windows to predict, compiling on a CPU (20 s and more) costs more than it saves
COMPILE_MIN_WINDOWS = 300


@dataclass
class LoadedModel:
    """A network in eval mode on its device, with what is needed to feed and read it."""
    net: torch.nn.Module
    classes: list
    im_size: tuple  # (width, height)
    im_dim: int
    multi_label: bool
    spec: dict  # the checkpoint's spectrogram settings (may be empty)
    device: torch.device
    path: str = ''
    meta: dict = field(default_factory=dict)  # how it was trained (checkpoint_meta)


class _NoInit(TorchFunctionMode):
    """torch.nn.init calls do nothing while a checkpoint's network is built: its weights are
    loaded right after. Saves 0.12 s of the paper network's 0.20 s load (one CPU thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, '__module__', None) == 'torch.nn.init':
            return args[0] if args else kwargs['tensor']
        return func(*args, **(kwargs or {}))


def load_model(name, model_dir, device='auto'):
    """A checkpoint's network in eval mode on a device: `name` is a path, or a file name under model_dir.
    Raises CheckpointError (missing, unreadable, not a checkpoint) or ValueError (no such device)."""
    device = select_device(device)
    path = resolve_model_path(name, model_dir)
    ckpt = load_checkpoint(path)
    with _NoInit():
        net = AEDNet(len(ckpt['classes']), tuple(ckpt['im_size']), ckpt['im_dim'], ckpt['filters'],
                     ckpt.get('dropout', 0.5), ckpt.get('nonlinearity', 'relu'))
    try:
        net.load_state_dict(ckpt['state_dict'])  # strict: every weight is set
    except RuntimeError as e:
        raise CheckpointError(f'{path}: weights do not match the architecture it describes ({e})') from None
    net = net.to(device).eval()
    if device.type == 'cuda':
        net = net.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # autotune: inference batches have few shapes
    return LoadedModel(net=net, classes=ckpt['classes'], im_size=tuple(ckpt['im_size']),
                       im_dim=ckpt['im_dim'], multi_label=ckpt.get('multi_label', False),
                       spec=ckpt.get('spec') or {}, device=device, path=str(path), meta=checkpoint_meta(ckpt))


def spec_settings(model_spec, fallback, length=None, overlap=None):
    """{'length', 'overlap', 'sample_rate', 'resample'}: explicit values, else the checkpoint's,
    else fallback's. Raises ValueError for windows that AED_spec cannot cut (defect 10)."""
    merged = {**fallback, **model_spec}
    merged.update({k: v for k, v in (('length', length), ('overlap', overlap)) if v is not None})
    problem = check.spec_window('length', merged['length'], 'overlap', merged['overlap'],
                                merged['sample_rate'])
    if problem:
        raise ValueError(problem)
    return {k: merged[k] for k in fallback}  # the four keys of spec_defaults


def compile_model(model, rows):
    """torch.compile model.net now, on `rows` windows of zeros: lazily it would be timed as the
    first file's prediction and fail there. Returns a warning, or None; failed, net stays plain."""
    w, h = model.im_size
    try:
        net = torch.compile(model.net)
        predict(net, torch.zeros(rows, 1, h, w), model.device, model.multi_label, model.im_dim, rows)
    except RuntimeError as e:  # torch._dynamo's and inductor's errors, unsupported platforms
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f'torch.compile failed ({reason}); running uncompiled'
    model.net = net
    return None


def open_for_prediction(args, model_dir, fallback, batch_sizes, paths, ddp=None, quiet=False):
    """(model, settings, batch size, decoding workers) for the flags in args; batch_sizes is
    (on CUDA, elsewhere). A model that cannot be used is one ERROR line and exit status 2."""
    say = (lambda *a, **k: None) if quiet else print  # status lines stay off JSON output
    say('IMPORTING MODEL...', end=' ', flush=True)
    device = args.device
    if ddp and device in ('auto', 'cuda') and torch.cuda.is_available():  # each rank its own GPU
        device = f'cuda:{ddp[2]}'
        torch.cuda.set_device(device)
    try:
        model = load_model(args.modelname, model_dir, device)
        settings = spec_settings(model.spec, fallback, args.speclength, args.overlap)
    except (CheckpointError, ValueError) as e:
        say()
        check.exit_on([str(e)])
    say('DONE!')
    trained, on_cpu = model.spec.get('length'), model.device.type == 'cpu'
    if trained is not None and trained != settings['length']:
        print(f"WARNING: the model was trained on {trained} s windows, testing with {settings['length']} s",
              file=sys.stderr)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    threads = pick_threads(args.threads, model.im_size, model.meta.get('filters', 64), cores,
                           cap=torch.get_num_threads(), omp_env=os.environ.get('OMP_NUM_THREADS'))
    if threads is not None and on_cpu:
        torch.set_num_threads(threads)
    batch_size = args.batch_size or batch_sizes[model.device.type != 'cuda']
    if args.compile:
        compile_now(model, paths, settings, batch_size)
    # the processes torchrun starts on a node share its cores
    workers = decoding_workers(getattr(args, 'workers', 0), len(paths), on_cpu,
                               cores // int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    return model, settings, batch_size, workers


def compile_now(model, paths, settings, batch_size):
    """--compile: warn where it cannot pay off, then compile on the first batch's shape, timed."""
    windows, rate = 0, settings['sample_rate']
    for path in paths:  # from the headers, until there are enough
        try:
            info = sf.info(str(path))
        except (sf.SoundFileError, OSError, ValueError, EOFError, RuntimeError):
            continue  # a bad file gives no windows
        n = int(info.frames * rate / info.samplerate)
        windows += len(split_bounds(n, rate, settings['length'], settings['overlap'])) if n else 0
        if windows >= max(COMPILE_MIN_WINDOWS, batch_size):
            break
    if model.device.type == 'cpu' and windows < COMPILE_MIN_WINDOWS:
        print(f'WARNING: --compile on a CPU for {windows} windows: compiling will cost more than it '
              f'saves (it pays off on a GPU and on long runs)', file=sys.stderr)
    print('COMPILING...', end=' ', file=sys.stderr, flush=True)
    start = time.perf_counter()
    warning = compile_model(model, batch_rows(min(max(windows, 1), batch_size), batch_size,
                                              model.device.type == 'cuda'))
    print(f'DONE! ({time.perf_counter() - start:.1f} s)' if warning is None else '', file=sys.stderr)
    if warning:
        print(f'WARNING: {warning}', file=sys.stderr)
