"""Helpers several test files share (conftest.py holds the shared fixtures)."""


def run_main(main, capsys, *argv):
    """(exit status, stdout, stderr) of a script's main(argv): 0 for a normal return (None or a
    summary dict), else the status it returned or exited with."""
    try:
        status = main([str(a) for a in argv])
        status = 0 if status is None or isinstance(status, dict) else status
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def stop_after(monkeypatch, module, epochs):
    """Ctrl-C at the start of epoch epochs + 1 of module's (AED_train's) training loop."""
    real, calls = module.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) > epochs:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(module, 'train_epoch', train_epoch)
