"""Device names resolve the same way in every torch-running service."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cdissect_common.devices import resolve_device


def test_auto_and_none_pick_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device(" CPU ").type == "cpu"
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_fix() -> None:
    with pytest.raises(ValueError, match="CUDA is not available.*'cpu' or 'auto'"):
        resolve_device("cuda:0")


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_importing_it_does_not_import_torch() -> None:
    code = "import sys, cdissect_common.devices; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
