"""demo.sh, config.py and the README's commands name the same models (issue 9.4)."""
import re
import shlex
from pathlib import Path

import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def commands(text):
    """Shell commands of a script or of the README's code blocks, continuation lines joined."""
    if '```' in text:  # Markdown: only the fenced code blocks hold commands
        text = '\n'.join(re.findall(r'```[a-z]*\n(.*?)```', text, re.S))
    text = re.sub(r'\\\n\s*', ' ', text)
    lines = [re.sub(r'^\$ ', '', line.strip()) for line in text.splitlines()]
    return [line for line in lines if re.search(r'AED_\w+\.py', line) and not line.startswith('#')]


def words(command):
    return shlex.split(command.split(' #', 1)[0])


def flag(command, name, count=1):
    w = words(command)
    if name not in w:
        return None
    i = w.index(name)
    return w[i + 1] if count == 1 else w[i + 1:i + 1 + count]


def script(command):
    return re.search(r'AED_\w+\.py', command).group(0)


def demo():
    return commands((ROOT / 'demo.sh').read_text())


def demo_model():
    (train,) = [c for c in demo() if script(c) == 'AED_train.py']
    return f"AED_{flag(train, '--run-name') or cfg.RUN_NAME}_model_best.pt"


def readme():
    return (ROOT / 'README.md').read_text()


def test_demo_evaluates_and_tests_the_model_it_trains():
    used = [flag(c, '--modelname') or cfg.TRAINED_MODEL for c in demo()
            if script(c) in ('AED_eval.py', 'AED_test.py')]
    assert len(used) == 4 and set(used) == {demo_model()}  # two of each


def test_defaults_name_the_model_that_default_training_writes():
    assert cfg.TRAINED_MODEL == f'AED_{cfg.RUN_NAME}_model_best.pt'


def test_readme_commands_name_models_that_some_documented_command_trains():
    text = readme()
    trained = {demo_model(), f'AED_{cfg.RUN_NAME}_model_best.pt'}
    trained |= {f"AED_{flag(c, '--run-name')}_model_best.pt" for c in commands(text)
                if script(c) == 'AED_train.py' and flag(c, '--run-name')}
    checked = 0
    for c in commands(text):
        if script(c) not in ('AED_eval.py', 'AED_test.py'):
            continue
        name = flag(c, '--modelname') or cfg.TRAINED_MODEL  # no flag: the default
        if re.fullmatch(r'AED_\w+_model_best\.pt', name):  # a bare name looked up in MODEL_PATH
            assert name in trained, c
            checked += 1
    assert checked >= 6


def test_readme_quick_start_runs_the_demos_model_right_after_the_demo():
    quick_start = readme().split('## Introduction', 1)[0]
    assert 'bash demo.sh' in quick_start
    after = [c for c in commands(quick_start) if script(c) in ('AED_eval.py', 'AED_test.py')]
    assert {script(c) for c in after} == {'AED_eval.py', 'AED_test.py'}
    # no --modelname: the demo trains the default model (issue 13.1)
    assert all(flag(c, '--modelname') is None for c in after) and demo_model() == cfg.TRAINED_MODEL


def test_readme_quick_start_activates_the_venv_before_plain_python():
    block = re.search(r'```bash\n(.*?)```', readme(), re.S).group(1)
    lines = [line for line in block.splitlines() if line and not line.startswith('#')]
    activated = next(i for i, line in enumerate(lines) if '. .venv/bin/activate' in line)
    assert lines[activated].index('. .venv/bin/activate') < lines[activated].index('pip install')
    plain = [i for i, line in enumerate(lines) if re.search(r'(^|&& )(python|pip) ', line)]
    assert plain and min(plain) >= activated


def test_readme_training_section_documents_the_demos_cpu_preset():
    (train,) = [c for c in demo() if script(c) == 'AED_train.py']
    preset = (f"--im-size {' '.join(flag(train, '--im-size', 2))} --filters {flag(train, '--filters')} "
              f"--epochs {flag(train, '--epochs')}")
    training = readme().split('## Training a Model', 1)[1].split('\n## ', 1)[0]
    assert preset in training and 'demo.sh' in training
    assert f'AED_{cfg.RUN_NAME}_model_best.pt' in training


def test_without_modelname_both_scripts_use_the_default_model_from_another_folder(
        tiny_model, demo_data, tmp_path, monkeypatch, capsys):
    """What the quick start runs after the demo: no --modelname, from any folder (issue 13.1)."""
    import shutil

    import AED_eval
    import AED_test
    models = tmp_path / 'models'
    models.mkdir()
    shutil.copy(tiny_model, models / cfg.TRAINED_MODEL)
    monkeypatch.setattr(cfg, 'MODEL_PATH', str(models))  # absolute: ROOT / it is itself
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    example = demo_data / 'examples' / 'siren_example.wav'
    assert AED_test.main(['--filenames', str(example)]) == 0
    summary = AED_eval.main(['--testdir', str(demo_data / 'test'), '--confmatrix', '', '--quiet'])
    assert summary['model'] == str(models / cfg.TRAINED_MODEL) and summary['errors'] == 0
    out = capsys.readouterr().out
    assert 'TOP PREDICTION(S):' in out and 'MAP:' in out
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran
