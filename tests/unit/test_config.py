from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import RouteConfig, load_settings
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
        (ROUTE + "surprise: 1\n", "surprise: unknown key; valid keys here: auth,"),
        (
            ROUTE.replace("model: t}", "model: t, timeout: 3}"),
            "routes.0.teacher.timeout: unknown key; did you mean 'timeout_s'?",
        ),
        (ROUTE + "servr: {port: 1}\n", "servr: unknown key; did you mean 'server'?"),
        (
            ROUTE + "    rollout: {percnt: 5}\n",
            "routes.0.rollout.percnt: unknown key; did you mean 'percent'?",
        ),
        (ROUTE + "    slices: {critical: [{dimension: t, value: v, bar: 1}]}\n", "valid keys here"),
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
    with pytest.raises(ConfigError, match="does not exist: name one with --config") as caught:
        load_settings(tmp_path / "absent.yaml")
    assert "examples/shadow-gateway.yaml" in str(caught.value)
    text = ROUTE + "auth: {keys: [{name: app, key_env: SGW_UNSET_KEY}]}\n"
    monkeypatch.delenv("SGW_UNSET_KEY", raising=False)
    unset = load_settings(write(tmp_path, text))  # loads: secrets are read when first used
    with pytest.raises(ConfigError, match="SGW_UNSET_KEY"):
        _ = unset.api_keys
    monkeypatch.setenv("SGW_UNSET_KEY", "secret")
    settings = load_settings(write(tmp_path, text))
    assert settings.api_keys[0].scopes == frozenset({"app"})
    assert "secret" not in repr(settings.api_keys)


TWO = """
routes:
  - name: r
    teacher: {base_url: "http://127.0.0.1:1/v1", model: t}
    shadow_sample: 0.5
    students:
      - {name: small, base_urls: ["http://127.0.0.1:2/v1"], model: s, shadow_sample: 0.1}
      - {name: tiny, base_urls: ["https://tiny.example/v1"], model: s2}
"""


def load_route(tmp_path: Path, text: str) -> RouteConfig:
    route = load_settings(write(tmp_path, text)).config.route("r")
    assert route is not None
    return route


def test_one_student_form_is_a_student_named_default(tmp_path: Path) -> None:
    route = load_route(tmp_path, ROUTE)
    assert [student.name for student in route.students] == ["default"]
    assert route.champion == "default"
    assert route.student is route.champion_student is route.students[0]
    assert route.student.model == "s"
    assert route.sample_share(route.student) == 1.0


def test_list_form_with_a_champion(tmp_path: Path) -> None:
    route = load_route(tmp_path, TWO + "    champion: tiny\n")
    assert [student.name for student in route.students] == ["small", "tiny"]
    assert route.champion == "tiny"
    assert route.student is route.champion_student is route.students[1]
    assert [route.sample_share(s) for s in route.students] == [0.1, 0.5]


def test_champion_defaults_to_the_first_student(tmp_path: Path) -> None:
    route = load_route(tmp_path, TWO)
    assert route.champion == "small"
    assert route.student is route.students[0]
    # a dump holds the list form only, and it validates again to the same route
    assert "student" not in route.model_dump()
    assert RouteConfig.model_validate(route.model_dump()) == route


def test_a_named_single_student_and_routes_without_students(tmp_path: Path) -> None:
    named = load_route(tmp_path, ROUTE.replace("model: s}", "model: s, name: base}"))
    assert (named.champion, named.student and named.student.name) == ("base", "base")
    text = "routes: [{name: r, teacher: {base_url: 'http://h/v1', model: t}, mode: teacher}]\n"
    bare = load_route(tmp_path, text)
    assert (bare.students, bare.champion, bare.student, bare.champion_student) == (
        [],
        None,
        None,
        None,
    )


def test_every_student_api_key_is_needed_to_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = TWO.replace("model: s2}", "model: s2, api_key_env: SGW_TINY_KEY}")
    monkeypatch.delenv("SGW_TINY_KEY", raising=False)
    with pytest.raises(ConfigError, match="SGW_TINY_KEY"):
        _ = load_settings(write(tmp_path, text)).upstream_keys
    monkeypatch.setenv("SGW_TINY_KEY", "k")
    assert set(load_settings(write(tmp_path, text)).upstream_keys) == {"SGW_TINY_KEY"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            TWO + "    student: {base_urls: ['http://h/v1'], model: s}\n",
            "routes.0: Value error, give either student or students",
        ),
        (
            TWO + "    champion: big\n",
            "routes.0: Value error, champion 'big' is not among the route's students: small, tiny",
        ),
        (
            ROUTE + "    champion: big\n",
            "champion 'big' is not among the route's students: default",
        ),
        (
            TWO.replace("name: tiny", "name: small"),
            "routes.0: Value error, duplicate student name 'small'",
        ),
        (
            TWO.replace("name: tiny", "name: Tiny!"),
            "routes.0.students.1.name: String should match pattern",
        ),
        (
            TWO.replace("https://tiny", "ftp://tiny"),
            "routes.0.students.1.base_urls.0: URL scheme should be 'http' or 'https'",
        ),
        (
            ROUTE.replace("http://127.0.0.1:2", "ftp://127.0.0.1:2"),
            "routes.0.student.base_urls.0: URL scheme should be 'http' or 'https'",
        ),
        (
            TWO.replace("shadow_sample: 0.1", "shadow_sample: 1.5"),
            "routes.0.students.0.shadow_sample: Input should be less than or equal to 1",
        ),
        (ROUTE.replace(", model: s}", "}"), "routes.0.student.model: Field required"),
        (
            "routes: [{name: r, teacher: {base_url: 'http://h/v1', model: t}, students: []}]\n",
            "route 'r' is in shadow mode but has no student",
        ),
        (
            "routes: [{name: r, teacher: {base_url: 'http://h/v1', model: t}, students: [],"
            " mode: teacher, on_teacher_error: student}]\n",
            "routes.0: Value error, on_teacher_error: student needs a student",
        ),
    ],
)
def test_bad_students_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert message in str(caught.value)
