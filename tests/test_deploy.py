"""The Dockerfile and compose.yaml, checked without Docker (no engine on CI machines).

Fast tests parse both files and run what can run here: the HEALTHCHECK command against a
stub server, every compose command through its own argument parser, `check --deploy` with
production settings. The integration test builds what the image builds, a clean virtualenv
from pyproject.toml and the build context filtered by .dockerignore, and runs the image's
and compose's commands in it: collectstatic, migrate, runpool, gunicorn, the HEALTHCHECK.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from django.conf import settings
from django.core.management import CommandError, get_commands, load_command_class
from gunicorn.config import Config as GunicornConfig

from tests.test_settings_reference import doc_table

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS_MD = ROOT / "docs" / "settings.md"

# Variables of Python and pip themselves, not Onramp's: not in docs/settings.md.
STANDARD_VARIABLES = {
    "PATH",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_NO_CACHE_DIR",
}


# --- reading the files ---------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(args.split()), stage))
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def only(keyword: str) -> Instruction:
    found = [i for i in final_stage() if i.keyword == keyword]
    assert found, f"no {keyword} in the Dockerfile's final stage"
    return found[-1]  # the last one is the one in force


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected the exec (JSON) form, got {args!r}"
    return value


def healthcheck_command() -> list[str]:
    _, _, command = only("HEALTHCHECK").args.partition("CMD ")
    return exec_form(command)


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def expand(command: str, env: dict[str, str]) -> str:
    """${NAME:-default} and ${NAME} as sh expands them."""

    def value(match: re.Match) -> str:
        return env.get(match["name"]) or match["default"] or ""

    return re.sub(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}", value, command)


def image_command(env: dict[str, str] | None = None) -> list[str]:
    """The CMD as the container runs it, with `sh -c "exec ..."` unwrapped."""
    command = exec_form(only("CMD").args)
    if command[:2] == ["sh", "-c"]:
        words = shlex.split(expand(command[2], {**image_env(), **(env or {})}))
        return words[1:] if words[0] == "exec" else words
    return command


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def app_services() -> dict[str, dict]:
    """The services that run Onramp's image (built from this Dockerfile)."""
    return {name: s for name, s in compose()["services"].items() if "build" in s}


def service_command(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return image_command()
    return shlex.split(command) if isinstance(command, str) else list(command)


def gunicorn_options(args: list[str]):
    """gunicorn's own parsing of its command line (an unknown option fails the test)."""
    try:
        return GunicornConfig().parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"gunicorn rejects its arguments: {args}")


def documented_variables() -> set[str]:
    text = SETTINGS_MD.read_text()
    headings = [line.strip() for line in text.splitlines() if line.startswith("## ")]
    return {name for heading in headings for name, _ in doc_table(text, heading)}


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def docker_ignores(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- Dockerfile ----------------------------------------------------------------------
def test_the_image_is_built_in_stages_and_runs_on_slim_python():
    froms = [i.args for i in dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2
    assert froms[-1].split()[0] == "python:3.11-slim"
    builder = froms[0].split()[-1]
    assert any(i.keyword == "COPY" and f"--from={builder}" in i.args for i in final_stage())


def test_the_builder_installs_the_dependencies_pinned_in_pyproject():
    builder = [i for i in dockerfile() if i.stage == 0]
    assert any(i.keyword == "COPY" and "pyproject.toml" in i.args for i in builder)
    assert any(i.keyword == "RUN" and re.search(r"pip install \.( |$)", i.args) for i in builder)


def test_the_app_runs_as_a_user_that_is_not_root():
    user = only("USER").args.split(":")[0]
    assert user not in {"root", "0"}
    created = [i.args for i in final_stage() if i.keyword == "RUN" and "useradd" in i.args]
    assert created and (f"--uid {user}" in created[0] or f" {user}" in created[0])
    instructions = final_stage()
    assert instructions.index(only("USER")) < instructions.index(only("CMD"))


def test_var_dir_and_cache_dir_are_writable_by_the_app_user():
    env = image_env()
    assert env["CACHE_DIR"].startswith(env["VAR_DIR"] + "/")
    setup = " ".join(i.args for i in final_stage() if i.keyword == "RUN")
    assert f"mkdir -p {env['CACHE_DIR']}" in setup
    assert re.search(rf"chown -R \S+ {re.escape(env['VAR_DIR'])}", setup)


def test_static_files_are_collected_at_build_with_a_build_only_secret():
    runs = [i.args for i in final_stage() if i.keyword == "RUN" and "collectstatic" in i.args]
    assert runs, "collectstatic must run at build time"
    assert "SECRET_KEY=" in runs[0] and "DEBUG=0" in runs[0]
    assert "python manage.py collectstatic --no-input" in runs[0]
    # The throwaway key is inline in that RUN only: never baked into the image's config.
    for instruction in dockerfile():
        if instruction.keyword in {"ENV", "ARG"}:
            assert "SECRET_KEY" not in instruction.args


def test_the_command_is_gunicorn_serving_config_wsgi_on_port_8000():
    command = image_command()
    assert command[:2] == ["gunicorn", "config.wsgi"]
    assert "0.0.0.0:8000" in command
    assert "8000" in only("EXPOSE").args.split()
    parsed = gunicorn_options(command[1:])
    assert parsed.args == ["config.wsgi"] and parsed.workers == 3


def test_gunicorn_settings_follow_the_environment():
    command = image_command({"PORT": "9000", "WEB_CONCURRENCY": "7", "GUNICORN_TIMEOUT": "45"})
    assert command[command.index("--bind") + 1] == "0.0.0.0:9000"
    assert command[command.index("--workers") + 1] == "7"
    assert command[command.index("--timeout") + 1] == "45"


def test_every_variable_the_image_sets_or_reads_is_documented():
    text = DOCKERFILE.read_text()
    used = set(image_env()) | set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
    used |= set(re.findall(r"environ\.get\('([A-Z][A-Z0-9_]*)'", text))
    missing = sorted(used - STANDARD_VARIABLES - documented_variables())
    assert not missing, f"document {missing} in docs/settings.md"


class _StubHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers["Host"]))  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    server.seen, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int, **env: str) -> subprocess.CompletedProcess:
    command = healthcheck_command()
    assert command[0] == "python"
    clean = {"PATH": os.environ["PATH"], "PORT": str(port), **env}
    return subprocess.run(
        [sys.executable, *command[1:]], env=clean, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("allowed_hosts", "host"),
    [
        (".example.com,onramp.internal", "example.com"),
        ("onramp.example.com", "onramp.example.com"),
        ("*", "localhost"),
        ("", "localhost"),
    ],
)
def test_the_healthcheck_asks_healthz_for_an_allowed_host(stub_server, allowed_hosts, host):
    result = run_healthcheck(stub_server.server_port, ALLOWED_HOSTS=allowed_hosts)
    assert result.returncode == 0, result.stderr
    assert stub_server.seen == [("/healthz?scope=web", host)]


def test_the_healthcheck_fails_when_healthz_is_unhealthy(stub_server):
    stub_server.status = 503
    result = run_healthcheck(stub_server.server_port, ALLOWED_HOSTS="example.com")
    assert result.returncode != 0


def test_the_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_healthcheck(port).returncode != 0


KEPT = "manage.py pyproject.toml config/settings.py static/onramp.css templates/base.html"
DROPPED = ".git/config .venv/bin/python var/onramp.sqlite3 var/cache/x staticfiles/x.css .env"


@pytest.mark.parametrize("kept", [*KEPT.split(), "pool/management/commands/runpool.py"])
def test_the_build_context_keeps_what_the_image_needs(kept):
    assert not docker_ignores(kept, dockerignore_patterns())


@pytest.mark.parametrize("dropped", [*DROPPED.split(), "pool/__pycache__/models.pyc"])
def test_the_build_context_leaves_out_local_state(dropped):
    assert docker_ignores(dropped, dockerignore_patterns())


# --- compose.yaml ----------------------------------------------------------------------
def test_compose_runs_postgres_migrate_web_pool_and_an_optional_redis():
    services = compose()["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert set(app_services()) == {"migrate", "web", "pool"}
    assert services["redis"]["profiles"] == ["redis"]
    assert "8000" in services["web"]["ports"][0].rsplit(":", 1)[-1]


def test_web_and_pool_start_after_migrate_succeeded_and_migrate_after_postgres():
    services = compose()["services"]
    for name in ("web", "pool"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert " ".join(service_command(services["migrate"])) == "python manage.py migrate --no-input"


def test_the_pool_runs_runpool_with_a_host_name_and_time_to_stop_gracefully():
    pool = compose()["services"]["pool"]
    command = service_command(pool)
    assert command[2] == "runpool" and command[command.index("--host") + 1]
    grace = pool["stop_grace_period"]
    # runpool lets running tasks finish, up to the task timeout, before it exits.
    assert grace.endswith("s") and int(grace[:-1]) > settings.Q_TASK_TIMEOUT_S + 10


@pytest.mark.parametrize("name", ["migrate", "web", "pool"])
def test_each_command_is_a_management_command_or_gunicorn_config_wsgi(name):
    command = service_command(app_services()[name])
    if command[0] == "gunicorn":
        assert gunicorn_options(command[1:]).args == ["config.wsgi"]
        return
    assert command[:2] == ["python", "manage.py"], command
    commands = get_commands()
    assert command[2] in commands, f"no management command {command[2]!r}"
    parser = load_command_class(commands[command[2]], command[2]).create_parser(
        "manage.py", command[2]
    )
    try:
        parser.parse_args(command[3:])
    except CommandError as exc:
        pytest.fail(f"{' '.join(command)}: {exc}")


def test_every_variable_compose_uses_is_documented():
    used = set(re.findall(r"(?<!\$)\$\{?([A-Za-z_]\w*)", COMPOSE.read_text()))
    for service in app_services().values():
        used |= set(service["environment"])
    missing = sorted(used - documented_variables())
    assert not missing, f"document {missing} in docs/settings.md"


def test_compose_demands_a_secret_key_and_points_at_its_postgres():
    for service in app_services().values():
        env = service["environment"]
        assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
        assert "@postgres:5432/" in env["DATABASE_URL"]
        assert env["DEBUG"] == "0"


def test_documented_process_variables_are_used_somewhere():
    text = SETTINGS_MD.read_text()
    heading = next(
        line.strip()
        for line in text.splitlines()
        if line.startswith("## ") and "config/settings.py" not in line
    )
    sources = " ".join(
        (ROOT / name).read_text()
        for name in ("Dockerfile", "compose.yaml", "Procfile", "Makefile", "manage.py")
    )
    unused = sorted(name for name, _ in doc_table(text, heading) if name not in sources)
    assert not unused, f"docs/settings.md documents {unused}, which nothing reads"


# --- settings in production mode ---------------------------------------------------------
def production_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A process environment as a deployment has it: no pytest, no developer variables."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "example.com",
        "HTTPS": "1",
        "SECURE_PROXY_SSL_HEADER": "1",
        "DATABASE_URL": f"sqlite:///{tmp / 'x.sqlite3'}",
        "VAR_DIR": str(tmp / "var"),
    }
    env.update(extra)
    return env


def test_check_deploy_passes_with_production_settings(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _load_settings(tmp: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LANG": "C.UTF-8", **env}
    assert "PYTEST_VERSION" not in clean
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "config.settings", **clean},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("debug", [None, "0"])
def test_settings_refuse_to_load_without_a_secret_key_outside_debug(tmp_path, debug):
    result = _load_settings(tmp_path, **({"DEBUG": debug} if debug else {}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "SECRET_KEY" in result.stderr


def test_settings_load_without_a_secret_key_in_debug(tmp_path):
    result = _load_settings(tmp_path, DEBUG="1")
    assert result.returncode == 0, result.stderr


# --- the image's commands in a clean virtualenv -------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_build_context(destination: Path) -> None:
    patterns = dockerignore_patterns()

    def ignore(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        return {n for n in names if docker_ignores(prefix + n, patterns)}

    shutil.copytree(ROOT, destination, ignore=ignore)


@dataclass
class Image:
    """What `docker build` would make, as directories: /opt/venv and /app."""

    venv: Path
    app: Path
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in image_env().items() if k != "PATH"}
        env.update(production_env(self.tmp, **extra))
        env["PATH"] = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        env["CACHE_DIR"] = str(self.tmp / "var" / "cache")
        return env

    def run(self, args: list[str], timeout: float = 300, **env: str):
        result = subprocess.run(
            args, cwd=self.app, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    tmp = tmp_path_factory.mktemp("image")
    built = Image(venv=tmp / "venv", app=tmp / "app", tmp=tmp)
    # The builder stage: pyproject.toml alone, installed into a fresh virtualenv.
    deps = tmp / "deps"
    deps.mkdir()
    shutil.copy(ROOT / "pyproject.toml", deps)
    subprocess.run([sys.executable, "-m", "venv", built.venv], check=True, timeout=120)
    pip_env = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    pip = [built.venv / "bin" / "python", "-m", "pip", "install", "-q", deps]
    result = subprocess.run(pip, env=pip_env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout + result.stderr
    # The runtime stage: the build context, then its RUN lines that concern the app.
    _copy_build_context(built.app)
    for instruction in final_stage():
        if instruction.keyword == "RUN" and "manage.py" in instruction.args:
            built.run(["sh", "-c", instruction.args])
    return built


@pytest.mark.integration
def test_the_image_has_its_static_files_collected_and_compressed(image):
    manifest = json.loads((image.app / "staticfiles" / "staticfiles.json").read_text())
    hashed = manifest["paths"]["onramp.css"]
    assert hashed != "onramp.css"
    assert (image.app / "staticfiles" / f"{hashed}.gz").exists()


@pytest.mark.integration
def test_the_image_imports_gunicorn_and_the_wsgi_application(image):
    image.run(["python", "-c", "import gunicorn, config.wsgi; config.wsgi.application"])


@pytest.mark.integration
def test_the_image_passes_check_deploy(image):
    image.run(["python", "manage.py", "check", "--deploy", "--fail-level", "WARNING"])


@pytest.mark.integration
def test_the_image_collects_static_files_with_production_settings(image):
    image.run(["python", "manage.py", "collectstatic", "--no-input"])


def _get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "example.com", "X-Forwarded-Proto": "https"})
        reply = conn.getresponse()
        return reply.status, reply.read(), dict(reply.getheaders())
    finally:
        conn.close()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _stop(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _answers(port: int) -> bool:
    try:
        return _get(port, "/login/")[0] > 0
    except OSError:
        return False


def _healthcheck_passes(env: dict[str, str]) -> bool:
    # As Docker runs it: the exec form, `python` found on the container's PATH.
    result = subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=30)
    return result.returncode == 0


@pytest.mark.integration
def test_compose_migrate_pool_and_web_serve_and_pass_the_healthcheck(image):
    services = app_services()
    image.run(service_command(services["migrate"]))
    port = free_port()
    env = image.env(PORT=str(port), WEB_CONCURRENCY="2")
    # On loopback here, not 0.0.0.0: tests listen on this machine only.
    web_args = ["sh", "-c", exec_form(only("CMD").args)[2].replace("0.0.0.0", "127.0.0.1")]
    pool_log, web_log = image.tmp / "pool.log", image.tmp / "web.log"
    with open(pool_log, "w") as pool_out, open(web_log, "w") as web_out:
        pool = subprocess.Popen(
            service_command(services["pool"]),
            cwd=image.app,
            env=env,
            stdout=pool_out,
            stderr=subprocess.STDOUT,
        )
        web = subprocess.Popen(
            web_args, cwd=image.app, env=env, stdout=web_out, stderr=subprocess.STDOUT
        )
        try:
            _wait(lambda: _answers(port), 30, "gunicorn to answer")
            status, body, _ = _get(port, "/login/")
            assert status == 200, body[:2000]
            manifest = json.loads((image.app / "staticfiles" / "staticfiles.json").read_text())
            status, _, headers = _get(port, "/static/" + manifest["paths"]["onramp.css"])
            assert status == 200 and headers["Content-Type"].startswith("text/css")
            _wait(lambda: _healthcheck_passes(env), 60, "the web container's HEALTHCHECK")
            # The HEALTHCHECK (?scope=web) does not need runpool: wait for its heartbeat
            # on the full /healthz, or the SIGTERM below could reach runpool before its
            # handlers are installed (and the 503 awaited after it would prove nothing).
            _wait(lambda: _get(port, "/healthz")[0] == 200, 60, "runpool heartbeating")
            assert _stop(pool, 120) == 0, pool_log.read_text()[-3000:]
            # A graceful stop marks the host stopped: the full /healthz says so, while the
            # web container's HEALTHCHECK (?scope=web) stays healthy, so a pool outage does
            # not take ingest out of the load balancer too.
            _wait(lambda: _get(port, "/healthz")[0] == 503, 30, "/healthz to report the pool down")
            assert _healthcheck_passes(env)
        finally:
            _stop(pool, 120)
            _stop(web, 60)
    # Through the HTTPS redirect exemption and host validation, with production settings.
    assert '"GET /healthz?scope=web HTTP/1.1" 200' in web_log.read_text()
