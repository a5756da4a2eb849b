"""model/checkpoint.py load side: a bad file is one clear CheckpointError, a bug is not."""
import pickle

import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError, checkpoint_meta, load_checkpoint, save_checkpoint
from model.net import AEDNet


def bad_files(tmp_path):
    good = tmp_path / 'good.pt'
    save_checkpoint(good, AEDNet(3, (64, 64), 1, 2), {'classes': ['a', 'b', 'c'], 'im_size': (64, 64),
                                                        'im_dim': 1, 'filters': 2})
    data = good.read_bytes()
    files = {'text.pt': b'hello world this is text',  # torch's legacy reader: KeyError
             'notes.pt': b'not a checkpoint\n', 'empty.pt': b'', 'zeros.pt': bytes(64),
             'truncated.pt': data[:len(data) // 2], 'zipjunk.pt': b'PK\x03\x04' + b'x' * 100,
             'pickle.pt': pickle.dumps({'a': 1}, protocol=2)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / 'folder.pt').mkdir()
    return [tmp_path / name for name in files] + [tmp_path / 'folder.pt']


def test_bad_files_give_one_line_without_a_raw_exception_name(tmp_path):
    for path in bad_files(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and '\n' not in message, message
        for name in ('KeyError', 'RuntimeError', 'EOFError', 'UnpicklingError', 'OSError'):
            assert name not in message
    message = str(pytest.raises(CheckpointError, load_checkpoint, tmp_path / 'text.pt').value)
    assert message == (f'{tmp_path / "text.pt"} is not an AED checkpoint '
                       f'(not a PyTorch file, or a damaged one)')


def test_a_bug_inside_loading_is_not_reported_as_a_bad_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / 'm.pt', AEDNet(3, (64, 64), 1, 2), {'classes': ['a', 'b', 'c'],
                                                                    'im_size': (64, 64), 'im_dim': 1,
                                                                    'filters': 2})

    def broken(*args, **kwargs):
        raise TypeError('a programming error')

    monkeypatch.setattr(checkpoint.torch, 'load', broken)
    with pytest.raises(TypeError, match='a programming error'):
        load_checkpoint(tmp_path / 'm.pt')


def test_checkpoint_meta_keeps_the_run_description_only():
    ckpt = {'format': 'aed-checkpoint', 'version': 1, 'state_dict': {'w': torch.zeros(2)},
            'classes': ('a', 'b'), 'im_size': (128, 64), 'augmentation': {'roll': [0.5, (0.0, 0.05)]},
            'learning_rate': {0: 1e-3, 55: 1e-6}, 'seed': 3, 'note': None, 'resume': True,
            'optimizer': {'param_groups': [{'lr': 1e-3}]}, 'rng': {'torch': torch.zeros(3)},
            'log': [{'epoch': 1}], 'best_state': {'w': torch.ones(2)}, 'scaler': {}}
    assert checkpoint_meta(ckpt) == {'classes': ['a', 'b'], 'im_size': [128, 64],
                                     'augmentation': {'roll': [0.5, [0.0, 0.05]]},
                                     'learning_rate': {'0': 1e-3, '55': 1e-6}, 'seed': 3, 'note': None,
                                     'resume': True}
