"""Triton kernels for DiffusionGemma, each beside its plain-PyTorch reference.

This package shares its import name with the unrelated `kernels` hub package on PyPI. transformers
probes that name: it reads the version of the distribution that provides `kernels`, which for this
project is dgemma-helpers 0.x, below the hub package's minimum, so transformers correctly decides
the hub package is absent (tests/test_cli_and_packaging.py checks this).
"""

__version__ = "0.0.0+dgemma"
