"""Checkpoint files: a dict of the weights (state_dict) and the metadata that rebuilds the model,
read with torch.load(weights_only=True) so that loading never runs code."""
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

FORMAT = 'aed-checkpoint'
VERSION = 1
REQUIRED = ('state_dict', 'classes', 'im_size', 'im_dim', 'filters')
# keys of a resume checkpoint that hold training state, not a description of the run
RESUME_STATE = ('optimizer', 'scaler', 'best_state', 'rng', 'log')

# what torch.load raises on text, legacy-format garbage and truncated or corrupt archives
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, struct.error)


class CheckpointError(Exception):
    """A model file that is missing, unreadable or not an AED checkpoint."""


def detached_copy(obj):
    """obj (a state dict) with every tensor copied once to the CPU: a snapshot steps cannot change."""
    if torch.is_tensor(obj):
        obj = obj.detach()
        return obj.clone() if obj.device.type == 'cpu' else obj.cpu()  # .cpu() of a GPU tensor copies
    if isinstance(obj, dict):
        return {k: detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(detached_copy(v) for v in obj)
    return obj


def plain(value):
    """value with tuples as lists, Paths as absolute strings and numpy numbers as Python ones:
    what weights_only loading accepts and json.dumps can write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value.absolute())
    return value.item() if isinstance(value, np.generic) else value


def checkpoint_meta(ckpt):
    """What a checkpoint records about its run, as JSON data (no weights, marker or resume state)."""
    skip = ('state_dict', 'format', 'version') + RESUME_STATE
    return json.loads(json.dumps({k: plain(v) for k, v in ckpt.items() if k not in skip}))


def save_checkpoint(path, net, meta, **extra):
    """Port of AED_train.saveModel, atomic (a crash never leaves half a file); returns the Path.
    net: a bare module (not DDP's or torch.compile's wrapper), or a state dict's detached_copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = detached_copy(net.state_dict()) if isinstance(net, torch.nn.Module) else net
    data = {'format': FORMAT, 'version': VERSION, **meta, **extra, 'state_dict': state_dict}
    tmp = path.with_name(f'.{path.name}.part')
    torch.save(data, tmp)
    os.replace(tmp, path)
    return path


def resolve_model_path(name, model_dir):
    """A path as given (relative to the current folder), else a file name under model_dir."""
    path = Path(name)
    return path if path.is_file() else Path(model_dir) / name


def load_checkpoint(path):
    """Port of AED_train.loadModel with load_weights; raises CheckpointError with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'model file {path} not found')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        # torch's own text suggests weights_only=False, which must never be followed
        raise CheckpointError(f'{path} is not an AED checkpoint (not a PyTorch file, or it '
                              f'holds objects other than weights)') from None
    except PermissionError as e:
        raise CheckpointError(f'{path}: cannot read it ({e.strerror})') from None
    except UNREADABLE:
        raise CheckpointError(f'{path} is not an AED checkpoint (not a PyTorch file, '
                              f'or a damaged one)') from None
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not an AED checkpoint (no {FORMAT!r} marker)')
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f'{path} lacks {", ".join(missing)}')
    return data


def load_weights(net, ckpt, load_output_layer, source):
    """Port of AED_train.loadModel: a checkpoint's weights into net, all but the output layer
    without load_output_layer (transfer to another class count)."""
    state = {k: v for k, v in ckpt['state_dict'].items() if load_output_layer or not k.startswith('output.')}
    own = net.state_dict()
    for key, value in state.items():
        if key not in own:
            raise CheckpointError(f'{source} has layer {key}, which this network lacks '
                                  f'(another architecture?)')
        if own[key].shape != value.shape:
            hint = ('; set LOAD_OUTPUT_LAYER = False to transfer to another class count'
                    if key.startswith('output.') else '')
            raise CheckpointError(f'{source}: layer {key} has shape {tuple(value.shape)}, '
                                  f'this network needs {tuple(own[key].shape)}{hint}')
    missing = [k for k in own if k not in state and (load_output_layer or not k.startswith('output.'))]
    if missing:
        raise CheckpointError(f'{source} lacks layers {", ".join(missing[:3])} (another architecture?)')
    net.load_state_dict(state, strict=False)
