from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError

ROUTE = """
routes:
  - name: r
    teacher: {base_url: "http://127.0.0.1:1/v1", model: t}
    student: {base_urls: ["http://127.0.0.1:2/v1"], model: s}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ROUTE))
    route = settings.config.route("r")
    assert route is not None
    assert route.mode == "shadow"
    assert route.shadow_sample == 1.0
    assert settings.data_dir == tmp_path / ".shadow-gateway"  # relative to the file
    assert settings.config.route("nope") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ROUTE + "surprise: 1\n", "surprise: Extra inputs are not permitted"),
        (ROUTE.replace("model: t}", "model: t, timeout: 3}"), "routes.0.teacher.timeout"),
        ("routes: []\n", "routes: List should have at least 1 item"),
        (ROUTE + ROUTE.replace("routes:\n", ""), "used twice"),
        (ROUTE.replace("student:", "mode: shadow\n    x_student:"), "routes.0.x_student"),
        ("routes: [{name: r, teacher: {base_url: x, model: t}, mode: teacher}]\n", "base_url"),
        ("- just\n- a list\n", "mapping at the top level"),
        ("routes: [\n", "not valid YAML"),
        (ROUTE + "    agreement: {comparator: label}\n", "comparator label needs a pattern"),
        (ROUTE + "    agreement: {comparator: custom}\n", "comparator custom needs function"),
        (ROUTE + "    agreement: {comparator: fuzzy}\n", "routes.0.agreement.comparator"),
        (
            ROUTE + "    slices: {rules: [{dimension: c, pattern: '(', value: v}]}\n",
            "not a valid regular expression",
        ),
        (ROUTE + "    slices: {length_buckets: {bounds: [50, 20]}}\n", "strictly ascending"),
        (
            ROUTE + "    slices: {critical: [{dimension: Tier!, value: x, min_agreement: 2}]}\n",
            "routes.0.slices.critical.0.dimension",
        ),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert message in str(caught.value)


def test_shadow_route_without_student_is_refused(tmp_path: Path) -> None:
    text = "routes: [{name: r, teacher: {base_url: 'http://h/v1', model: t}}]\n"
    with pytest.raises(ConfigError, match="no student"):
        load_settings(write(tmp_path, text))


def test_missing_file_and_missing_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")
    text = ROUTE + "auth: {keys: [{name: app, key_env: SGW_UNSET_KEY}]}\n"
    monkeypatch.delenv("SGW_UNSET_KEY", raising=False)
    unset = load_settings(write(tmp_path, text))  # loads: secrets are read when first used
    with pytest.raises(ConfigError, match="SGW_UNSET_KEY"):
        _ = unset.api_keys
    monkeypatch.setenv("SGW_UNSET_KEY", "secret")
    settings = load_settings(write(tmp_path, text))
    assert settings.api_keys[0].scopes == frozenset({"app"})
    assert "secret" not in repr(settings.api_keys)
