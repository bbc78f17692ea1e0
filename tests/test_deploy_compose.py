"""The container images and the compose file in deploy/, checked without a Docker engine.

- deploy/docker-compose.yml parses as Compose does (YAML merge keys, ``${VAR…}`` interpolation)
  and validates against the Compose specification (the ``compose-spec`` package).
- Every service's command refers to something that exists: the gateway's ``shadow-gateway``
  console script is declared in pyproject.toml and its arguments parse with the real CLI;
  every bind-mounted file and build context is in the repository; Prometheus loads the rule
  files of deploy/prometheus and scrapes ports the services listen on; Grafana provisions the
  dashboard from where it is mounted; the gateway config is a valid config for this gateway.
- The gateway image's ENTRYPOINT + CMD is the serve command README.md documents, and the one
  docs/deploy.md quotes: the Dockerfile is the one source. Both images run as a numeric
  non-root user; the student's owns the directories vLLM writes to.
- The docs name the Compose version the file needs (v2, the ``docker compose`` plugin).
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from compose_spec import PyCompose

from gateway.cli import build_parser
from gateway.commands.serve import cmd_migrate, cmd_serve
from gateway.config import GatewayConfig, load_config_file
from gateway.shadow.analysis import build_analyses

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GATEWAY_DOCKERFILE = DEPLOY / "Dockerfile"
STUDENT_DOCKERFILE = DEPLOY / "Dockerfile.student"
DOCS = ROOT / "docs" / "deploy.md"

# The oldest Docker Compose that runs deploy/docker-compose.yml: the top-level `name:` came with
# v2.3.0 (compose-go 1.1.0). Compose v1 (`docker-compose`, Python) rejects the file.
COMPOSE_MINIMUM = "v2.3.0"
# Values for the variables the compose file requires (``${VAR:?…}``); the rest have defaults.
COMPOSE_ENV = {"SHADOW_GATEWAY_APP_KEY": "test-app-key", "OPENAI_API_KEY": "sk-test"}
_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?)([-?])([^}]*))?\})")


# -- Dockerfiles ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON (exec) form's argument list; shell form is split as a shell would."""
        if self.args.startswith("["):
            parsed: list[str] = json.loads(self.args)
            return parsed
        return shlex.split(self.args)


def dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"{path}: a continuation line ends the file"
    return instructions


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]


def image_user(path: Path) -> tuple[int, int]:
    """The uid and gid the image runs as: numeric, so the kubelet can check runAsNonRoot."""
    user = last(dockerfile(path), "USER").args
    assert re.fullmatch(r"\d+:\d+", user), f"{path.name}: USER {user} is not numeric uid:gid"
    uid, gid = user.split(":")
    return int(uid), int(gid)


def gateway_command() -> list[str]:
    """ENTRYPOINT + CMD of the gateway image: what a container runs when given no command."""
    instructions = dockerfile(GATEWAY_DOCKERFILE)
    return last(instructions, "ENTRYPOINT").exec_form() + last(instructions, "CMD").exec_form()


def console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    return scripts


def parse_gateway_args(args: list[str]) -> Any:
    """Parse with the real CLI; argparse exits on anything it does not know."""
    try:
        return build_parser().parse_args(args)
    except SystemExit as exc:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"shadow-gateway cannot parse {args}") from exc


# -- compose ----------------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``, recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, colon, kind, word = match.groups()
        if name is None:
            return "$"
        current = env.get(name)
        unset = current is None or (colon == ":" and current == "")
        if kind == "?" and unset:
            raise AssertionError(f"the compose file requires {name}: {word}")
        if kind == "-" and unset:
            return str(word)
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)  # resolves the `<<: *anchor` merges as Compose does
    document: dict[str, Any] = interpolate(raw, COMPOSE_ENV if env is None else env)
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> repository path, for the service's bind mounts (short syntax)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def mounted(service: dict[str, Any], container_path: str) -> Path:
    """The repository file behind ``container_path`` (a mount of it or of a folder above)."""
    for target, source in bind_mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"nothing is mounted at {container_path}")


def gateway_config(service: dict[str, Any]) -> GatewayConfig:
    return load_config_file(mounted(service, service["environment"]["SHADOW_GATEWAY_CONFIG"]))


# -- the compose file -------------------------------------------------------------------------


def test_compose_file_is_valid_compose() -> None:
    spec = PyCompose.from_json(json.dumps(compose()))
    assert set(spec.service_names()) >= {
        "postgres",
        "migrate",
        "gateway",
        "student",
        "prometheus",
        "grafana",
    }


def test_compose_file_requires_the_secrets_it_cannot_default() -> None:
    for name in COMPOSE_ENV:
        with pytest.raises(AssertionError, match=name):
            compose({key: value for key, value in COMPOSE_ENV.items() if key != name})


def test_every_bind_mount_and_build_context_is_in_the_repository() -> None:
    for name, service in services().items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.is_relative_to(ROOT), f"{name}: {source} is outside the repository"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"


def test_gateway_and_migrate_run_the_gateway_image_commands() -> None:
    found = services()
    entrypoint = last(dockerfile(GATEWAY_DOCKERFILE), "ENTRYPOINT").exec_form()
    assert entrypoint == ["shadow-gateway"]
    assert console_scripts()["shadow-gateway"] == "gateway.cli:main"
    for name in ("gateway", "migrate"):
        assert found[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "entrypoint" not in found[name], f"{name} must keep the image's entrypoint"
    # The gateway keeps the image's CMD (the documented serve command); migrate replaces it.
    assert "command" not in found["gateway"]
    assert parse_gateway_args(gateway_command()[1:]).handler is cmd_serve
    assert parse_gateway_args(found["migrate"]["command"]).handler is cmd_migrate


def test_services_start_in_order_and_the_gateway_gets_time_to_drain() -> None:
    found = services()
    assert found["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert found["migrate"]["restart"] == "no"
    assert found["gateway"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    drain = gateway_config(found["gateway"]).server.drain_timeout_s
    grace = int(found["gateway"]["stop_grace_period"].removesuffix("s"))
    assert grace > 2 * drain + 5, "in-flight requests and shadow calls each get drain_timeout_s"


def test_the_gateway_reaches_postgres_and_the_student_it_is_given() -> None:
    found = services()
    gateway = found["gateway"]
    postgres = found["postgres"]["environment"]
    url = urlsplit(gateway["environment"]["DATABASE_URL"])
    assert url.hostname == "postgres"
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]
    assert "postgres-data:/var/lib/postgresql/data" in found["postgres"]["volumes"]
    assert found["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]

    config = gateway_config(gateway)
    build_analyses(config)  # comparators and slice rules compile
    assert config.server.host == "0.0.0.0"
    assert any(v.endswith(f":{config.data_dir}") for v in gateway["volumes"]), "journal volume"
    student = found["student"]
    student_port = dockerfile_env(STUDENT_DOCKERFILE)["STUDENT_PORT"]
    for route in config.routes:
        assert route.student is not None
        assert route.student.model == student["environment"]["STUDENT_SERVED_NAME"]
        for base_url in route.student.base_urls:
            parts = urlsplit(str(base_url))
            assert (parts.hostname, str(parts.port), parts.path.rstrip("/")) == (
                "student",
                student_port,
                "/v1",
            )
    # Every secret the config names comes from the environment the compose file passes.
    names = {key.key_env for key in config.auth.keys}
    names |= {route.teacher.api_key_env for route in config.routes if route.teacher.api_key_env}
    for service in ("gateway", "migrate"):
        assert names <= set(found[service]["environment"]), f"{service} lacks a secret"


def test_student_has_a_gpu_and_serves_enough_logprobs() -> None:
    student = services()["student"]
    assert student["profiles"] == ["gpu"]
    devices = student["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert student["build"]["dockerfile"] == "Dockerfile.student"
    config = gateway_config(services()["gateway"])
    top = max(route.student.top_logprobs for route in config.routes if route.student)
    assert top <= _student_max_logprobs()


def test_prometheus_loads_the_rules_and_scrapes_the_services() -> None:
    found = services()
    prometheus = found["prometheus"]
    flags = dict(flag.removeprefix("--").partition("=")[::2] for flag in prometheus["command"])
    with mounted(prometheus, flags["config.file"]).open(encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    rule_sources = {mounted(prometheus, path) for path in config["rule_files"]}
    assert rule_sources == {
        (DEPLOY / "prometheus" / "alerts.yml").resolve(),
        (DEPLOY / "prometheus" / "recording.yml").resolve(),
    }
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    gateway_port = parse_gateway_args(gateway_command()[1:]).port  # the CLI's --port wins
    assert f"127.0.0.1:{gateway_port}:{gateway_port}" in found["gateway"]["ports"]
    student_port = dockerfile_env(STUDENT_DOCKERFILE)["STUDENT_PORT"]
    assert targets == {f"gateway:{gateway_port}", f"student:{student_port}"}


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = services()["grafana"]
    provisioning = "/etc/grafana/provisioning"
    provider_file = mounted(grafana, f"{provisioning}/dashboards/shadow-gateway.yaml")
    with provider_file.open(encoding="utf-8") as handle:
        provider = yaml.safe_load(handle)["providers"][0]
    dashboard = mounted(grafana, provider["options"]["path"] + "/shadow-gateway.json")
    assert dashboard == (DEPLOY / "grafana" / "shadow-gateway.json").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounted(grafana, home) == dashboard
    datasource_file = mounted(grafana, f"{provisioning}/datasources/prometheus.yaml")
    with datasource_file.open(encoding="utf-8") as handle:
        datasource = yaml.safe_load(handle)["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert urlsplit(datasource["url"]).hostname in services()


# -- the images -------------------------------------------------------------------------------


def test_gateway_image_command_is_the_documented_serve_command() -> None:
    command = gateway_command()
    assert command[:2] == ["shadow-gateway", "serve"]
    # Only options the README documents for serve (its command table) or for every command.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    serve_row = re.search(r"^\| `shadow-gateway serve ([^`]*)`", readme, re.MULTILINE)
    assert serve_row, "README.md no longer documents `shadow-gateway serve`"
    documented = set(re.findall(r"--[a-z-]+", serve_row.group(1)))
    documented |= set(re.findall(r"Every command takes `(--[a-z-]+)", readme))
    used = {arg for arg in command if arg.startswith("--")}
    assert used <= documented, f"undocumented serve options: {used - documented}"
    args = parse_gateway_args(command[1:])
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    # docs/deploy.md quotes the command as the Dockerfile has it.
    assert shlex.join(command) in DOCS.read_text(encoding="utf-8")


def test_gateway_image_is_slim_multi_stage_unprivileged_and_checks_health() -> None:
    instructions = dockerfile(GATEWAY_DOCKERFILE)
    stages = [i.args for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "a build stage and a runtime stage"
    base = next(i.args for i in instructions if i.keyword == "ARG" and "PYTHON_IMAGE=" in i.args)
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.\d+-slim(-\w+)?", base)
    uid, _gid = image_user(GATEWAY_DOCKERFILE)
    assert uid != 0
    healthcheck = last(instructions, "HEALTHCHECK").args
    port = parse_gateway_args(gateway_command()[1:]).port
    assert f"127.0.0.1:{port}/healthz" in healthcheck
    env = dockerfile_env(GATEWAY_DOCKERFILE)
    assert env["SHADOW_GATEWAY_CONFIG"] == parse_gateway_args(gateway_command()[1:]).config


def test_gateway_image_copies_only_what_the_wheel_needs_and_that_exists() -> None:
    copied = [
        i.exec_form()[:-1]
        for i in dockerfile(GATEWAY_DOCKERFILE)
        if i.keyword == "COPY" and "--from" not in i.args
    ]
    sources = [source for sources in copied for source in sources]
    assert sources, "the build stage copies the project"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The wheel's contents are what pyproject.toml packages, and the .dockerignore keeps them.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    kept = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert set(sources) <= kept
    assert {"gateway", "migrations", "pyproject.toml", "README.md"} <= set(sources)


def test_student_image_runs_the_vllm_openai_server() -> None:
    instructions = dockerfile(STUDENT_DOCKERFILE)
    base = next(i.args for i in instructions if i.keyword == "ARG" and "VLLM_IMAGE=" in i.args)
    assert base.startswith("VLLM_IMAGE=vllm/vllm-openai:v")
    script = last(instructions, "ENTRYPOINT").exec_form()
    assert script[:2] == ["/bin/sh", "-c"]
    words = shlex.split(script[2])
    assert words[:4] == ["exec", "python3", "-m", "vllm.entrypoints.openai.api_server"]
    flags = {word for word in words if word.startswith("--")}
    assert {"--model", "--served-model-name", "--port", "--max-logprobs"} <= flags
    assert "/health" in last(instructions, "HEALTHCHECK").args
    # The default build target serves STUDENT_MODEL; `baked` is built only when asked for.
    assert [i.args for i in instructions if i.keyword == "FROM"][-1].endswith(" AS runtime")


def test_student_image_runs_as_an_unprivileged_user() -> None:
    uid, gid = image_user(STUDENT_DOCKERFILE)
    assert uid != 0
    assert gid != 0
    # The image creates that user and hands it the directories vLLM writes to: its home (the
    # torch.compile, Triton and FlashInfer caches) and HF_HOME (the downloaded weights).
    setup = " ".join(i.args for i in dockerfile(STUDENT_DOCKERFILE) if i.keyword == "RUN")
    assert f"--uid {uid}" in setup
    assert f"--gid {gid}" in setup
    owned = [
        Path(directory)
        for paths in re.findall(rf"chown (?:-R )?{uid}:{gid} ([^&;]+)", setup)
        for directory in paths.split()
    ]
    env = dockerfile_env(STUDENT_DOCKERFILE)
    for name in ("HOME", "HF_HOME"):
        assert any(Path(env[name]).is_relative_to(root) for root in owned), f"{name} not owned"
    # The compose file's cache volume is mounted where the image made it writable.
    volumes = services()["student"]["volumes"]
    assert any(volume.split(":")[1] == env["HF_HOME"] for volume in volumes)


# -- the docs ---------------------------------------------------------------------------------


def test_docs_say_which_compose_runs_the_file() -> None:
    assert "name" in compose(), "COMPOSE_MINIMUM is set by the top-level `name:`"
    for doc in (DOCS, DEPLOY / "README.md"):
        text = doc.read_text(encoding="utf-8")
        assert f"Compose {COMPOSE_MINIMUM}" in text, f"{doc.name}: say which Compose it needs"
        # Commands use the v2 plugin (`docker compose`), never the v1 `docker-compose` binary.
        legacy = re.findall(r"^\s*docker-compose\s.*$", text, re.MULTILINE)
        assert not legacy, f"{doc.name}: {legacy}"


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV values of a Dockerfile (``KEY=value`` pairs), later ones winning."""
    env: dict[str, str] = {}
    for instruction in dockerfile(path):
        if instruction.keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(instruction.args))
    return env


def _student_max_logprobs() -> int:
    words = shlex.split(last(dockerfile(STUDENT_DOCKERFILE), "ENTRYPOINT").exec_form()[2])
    return int(words[words.index("--max-logprobs") + 1])
