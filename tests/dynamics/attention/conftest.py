"""Kernel tests run the Triton kernels in the CPU interpreter.

``TRITON_INTERPRET=1`` must be set before any kernel module is imported: ``triton.jit`` decides at
decoration time whether a kernel is compiled or interpreted. This conftest is loaded before the
test modules of this directory, so setting it here, at import, is early enough. If it shares a
pytest process with other test directories, the variable stays set for them; that is harmless:
``attention.py`` only sends CPU tensors to the interpreted kernels when the Triton backend is
forced (``use_backend("triton")`` / ``WORLDSERVE_ATTENTION=triton``).
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's fp-fusion default warning

import pytest
import torch

_already = [
    m
    for m in (
        "worldserve.dynamics.attention.kernels.flash_prefill",
        "worldserve.dynamics.attention.kernels.flash_decode",
    )
    if m in sys.modules
]
if _already:  # imported (compiled mode) before this conftest ran: the interpreter tests cannot work
    raise RuntimeError(
        f"{_already} imported before TRITON_INTERPRET=1 was set; run tests/dynamics/attention on its own"
    )


GATE_TEST = "test_aot_gate_compiles_every_variant_for_sm90_and_sm80"


def pytest_collection_modifyitems(config, items):
    """Run the AOT gate's test last: it waits for the gate started with the session."""
    items.sort(key=lambda item: item.name == GATE_TEST)


@pytest.fixture(scope="session", autouse=True)
def aot_gate(request, tmp_path_factory):
    """The AOT gate subprocess, started with the session when its test is selected (it is CPU
    bound and long; overlapping it with the interpreter tests uses both cores). Yields
    ``(process, log path)`` or None."""
    if not any(item.name == GATE_TEST for item in request.session.items):
        yield None
        return
    from _kernel_testutil import start_aot_gate

    path = tmp_path_factory.mktemp("aot") / "gate.log"
    proc, log = start_aot_gate(path)
    try:
        yield proc, path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
