"""Benchmarks; run each as a module from the repository root: python -m bench.run_all."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev, folder):
    """The repository's files at commit rev, extracted into folder (for old-against-new timings)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(['git', '-C', str(ROOT), 'archive', rev], capture_output=True, check=True)
    subprocess.run(['tar', '-x', '-C', str(folder)], input=archive.stdout, check=True)
    return folder
