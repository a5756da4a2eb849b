"""Shared code of the AED scripts: audio, spectrograms, network, data, checkpoints.

Functions here never read config.py; the scripts pass every setting in.
"""
