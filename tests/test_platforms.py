"""Platform files hold to each platform's contract, and the app survives its lifecycle."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

import platforms
from conftest import (
    EVERY_TARGET,
    app_environment,
    bearer_headers,
    echo,
    free_port,
    package_of,
    require_tool,
    run_build,
    running,
    uv_environment,
    wait_until_healthy,
    with_virtualenv,
)


def app_setting(project: Path, expression: str, env: dict[str, str]) -> str:
    """Evaluate ``expression`` inside the baked package, with ``env`` as its environment."""
    package = package_of(project)
    code = (
        f"from {package}.config import Config\n"
        f"from {package}.routes import HEALTH_PATH, METRICS_PATH\n"
        f"config = Config.from_environ({env!r})\nprint({expression})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


# --- Cross-config consistency ----------------------------------------------


def test_every_platform_starts_the_same_command(default_project: Path) -> None:
    procfile = platforms.procfile_web(default_project)
    image = platforms.read_dockerfile(default_project / "Dockerfile")
    assert platforms.render_service(default_project)["startCommand"] == procfile
    assert " ".join(image.cmd) == procfile


def test_health_checks_probe_the_path_the_app_serves(default_project: Path) -> None:
    served = app_setting(default_project, "HEALTH_PATH", {})
    fly_checks = platforms.fly_config(default_project)["http_service"]["checks"]
    assert [check["path"] for check in fly_checks] == [served]
    assert platforms.render_service(default_project)["healthCheckPath"] == served


def test_fly_routes_to_the_port_the_image_listens_on(default_project: Path) -> None:
    config = platforms.fly_config(default_project)
    image = platforms.read_dockerfile(default_project / "Dockerfile")
    assert config["http_service"]["internal_port"] == int(image.env["PORT"])
    assert config["env"]["PORT"] == image.env["PORT"]


PLATFORMS = ["heroku", "fly", "render", "railway", "kubernetes"]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_shutdown_timeout_fits_in_the_platform_grace_period(
    every_target_project: Path, platform: str
) -> None:
    launch = getattr(platforms, platform)(every_target_project, port=8000)
    timeout = float(app_setting(every_target_project, "config.shutdown_timeout", launch.env))
    # Closing handshakes need a moment after the deadline, before SIGKILL.
    assert timeout + 5 <= launch.grace_seconds


def test_render_free_plan_leaves_out_the_shutdown_delay(bake: Callable[..., Path]) -> None:
    service = platforms.render_service(bake(render_plan="free"))
    assert "maxShutdownDelaySeconds" not in service
    assert service["plan"] == "free"


# --- Heroku ---------------------------------------------------------------


def test_heroku_python_version_comes_from_python_version_file(
    bake: Callable[..., Path],
) -> None:
    assert (bake(python_version="3.12") / ".python-version").read_text() == "3.12\n"


def test_app_json_describes_the_heroku_button(default_project: Path) -> None:
    app = platforms.app_json(default_project)
    assert app["name"] == "My WebSocket App"
    assert app["description"]
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    assert app["formation"]["web"]["quantity"] >= 1
    assert app["formation"]["web"]["size"]
    for name, spec in app["env"].items():
        assert spec["description"], name


def test_app_json_keeps_a_long_project_name_within_30_characters(
    bake: Callable[..., Path],
) -> None:
    app = platforms.app_json(bake(project_name="A Rather Long Name For A Chat Service"))
    assert app["name"] == "A Rather Long Name For A Chat"


# --- Fly.io ---------------------------------------------------------------


def test_fly_toml_uses_http_service_not_legacy_services(default_project: Path) -> None:
    config = platforms.fly_config(default_project)
    assert "services" not in config
    assert config["app"] == "my-websocket-app"
    assert config["primary_region"] == "iad"
    assert config["http_service"]["force_https"] is True
    assert (default_project / config["build"]["dockerfile"]).is_file()


def test_fly_region_comes_from_the_answer(bake: Callable[..., Path]) -> None:
    assert platforms.fly_config(bake(fly_region="fra"))["primary_region"] == "fra"


def test_fly_stops_machines_with_sigterm(default_project: Path) -> None:
    config = platforms.fly_config(default_project)
    assert config["kill_signal"] == "SIGTERM"
    assert platforms.seconds(config["kill_timeout"]) > 5  # Fly's default


def test_fly_auto_stop_is_one_of_the_documented_strings(default_project: Path) -> None:
    value = platforms.fly_config(default_project)["http_service"]["auto_stop_machines"]
    assert value in ("off", "stop", "suspend")


def test_fly_concurrency_counts_connections_above_the_default_limit(
    default_project: Path,
) -> None:
    concurrency = platforms.fly_config(default_project)["http_service"]["concurrency"]
    assert concurrency["type"] == "connections"
    assert 20 < concurrency["soft_limit"] <= concurrency["hard_limit"]


def test_fly_never_routes_more_connections_than_the_app_accepts(default_project: Path) -> None:
    concurrency = platforms.fly_config(default_project)["http_service"]["concurrency"]
    env = platforms.fly(default_project).env
    accepted = int(app_setting(default_project, "config.max_connections", env))
    assert concurrency["hard_limit"] == accepted


def test_fly_health_check_has_timing(default_project: Path) -> None:
    (check,) = platforms.fly_config(default_project)["http_service"]["checks"]
    assert check["method"] == "GET"
    for key in ("grace_period", "interval", "timeout"):
        assert platforms.seconds(check[key]) > 0, key


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_dockerfile_passes_hadolint(bake: Callable[..., Path], manager: str) -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "Dockerfile"], cwd=bake(package_manager=manager), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", ["3.14", "3.11"])
def test_dockerfile_builds_on_the_chosen_slim_python(
    bake: Callable[..., Path], version: str
) -> None:
    image = platforms.read_dockerfile(bake(python_version=version) / "Dockerfile")
    assert image.base_image == f"python:{version}-slim"


@pytest.mark.parametrize("manager", ["pip", "uv"])
def test_dockerfile_runs_python_directly_as_a_numeric_unprivileged_user(
    bake: Callable[..., Path], manager: str
) -> None:
    image = platforms.read_dockerfile(bake(package_manager=manager) / "Dockerfile")
    assert isinstance(image.cmd, list), "CMD must be exec form so Python gets the signal"
    assert image.cmd[0] == "python"  # uv's venv is first on PATH, no `uv run` in between
    assert image.user is not None and image.user.isdigit() and int(image.user) > 0
    assert image.env["PYTHONUNBUFFERED"] == "1"


def test_dockerignore_keeps_local_state_out_of_the_image(default_project: Path) -> None:
    ignored = (default_project / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)


# --- Render ---------------------------------------------------------------


def test_render_yaml_is_a_python_web_blueprint(default_project: Path) -> None:
    service = platforms.render_service(default_project)
    assert service["type"] == "web"
    assert service["runtime"] == "python"
    assert "env" not in service  # the legacy spelling of runtime
    assert service["name"] == "my-websocket-app"
    assert (service["plan"], service["region"]) == ("starter", "oregon")
    assert service["autoDeployTrigger"] == "commit"
    assert "requirements.txt" in service["buildCommand"]
    assert 1 <= service["maxShutdownDelaySeconds"] <= 300


def test_render_names_stay_strings_whatever_the_slug(bake: Callable[..., Path]) -> None:
    services = platforms.render_services(bake(project_slug="null"))
    assert services["web"]["name"] == "null"  # not YAML's null


@pytest.mark.parametrize(("plan", "region"), [("pro", "frankfurt"), ("standard", "singapore")])
def test_render_plan_and_region_come_from_the_answers(
    bake: Callable[..., Path], plan: str, region: str
) -> None:
    service = platforms.render_service(bake(render_plan=plan, render_region=region))
    assert (service["plan"], service["region"]) == (plan, region)


# --- Lifecycle, as each platform drives it ----------------------------------


def launch_for(platform: str, project: Path) -> platforms.Launch:
    """The platform's launch, on a free port.

    Tests bind free ports only: the platforms' own (8080 in fly.toml and the
    image, Render's 10000) may be taken here, and parallel tests would
    collide on them. test_fly_routes_to_the_port_the_image_listens_on checks
    the declared ports; the app reads PORT the same way whatever its value.
    """
    return getattr(platforms, platform)(project, port=free_port())


def wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Heroku has no HTTP health check: its router just needs the port bound."""
    deadline = time.monotonic() + 60  # Heroku's R10 boot timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    pytest.fail(f"port {port} not bound within 60 s:\n{log.read_text()}")


CLIENTS = 5


@pytest.mark.parametrize(
    ("use_redis", "package_manager"),
    [(True, "pip"), (False, "pip"), (True, "uv")],
    ids=["redis", "no-redis", "redis-uv"],
)
@pytest.mark.parametrize("platform", [*PLATFORMS, "koyeb"])
def test_platform_lifecycle_closes_every_client_with_1001_and_exits_0(
    bake: Callable[..., Path],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    platform: str,
    use_redis: bool,
    package_manager: str,
) -> None:
    project = bake(use_redis=use_redis, package_manager=package_manager, **EVERY_TARGET)
    launch = launch_for(platform, project)
    if use_redis:  # the platform's Redis add-on or service sets REDIS_URL
        launch.env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    environment = app_environment(**launch.env)
    if package_manager == "uv":  # build as the platform does, from uv.lock
        uv = uv_environment(request.getfixturevalue("uv_cache"), **launch.env)
        uv.pop("UV_NO_CACHE", None)  # the image's; here the session's cache saves downloads
        environment = with_virtualenv(uv, tmp_path / "venv")
        run_build(launch.build, project, environment)
    log = tmp_path / f"{platform}.log"
    with running(launch.argv, project, environment, log) as process:
        if launch.health is None:
            wait_until_listening(process, launch.port, log)
        else:
            method, path = launch.health
            wait_until_healthy(process, launch.port, log, path=path, method=method)

        # Where the platform generates JWT_SECRET, clients need a token.
        headers = bearer_headers(launch.env.get("JWT_SECRET"))
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(
                    connect(f"ws://127.0.0.1:{launch.port}/ws/room{i}", additional_headers=headers)
                )
                for i in range(CLIENTS)
            ]
            for client in clients:
                assert echo(client, "before the deploy") == "before the deploy"

            started = time.monotonic()
            if launch.signal_every_process:
                os.killpg(process.pid, launch.kill_signal)
            else:
                process.send_signal(launch.kill_signal)

            for client in clients:
                with pytest.raises(ConnectionClosedOK):
                    client.recv(timeout=launch.grace_seconds)
                assert client.close_code == 1001
            assert process.wait(timeout=launch.grace_seconds) == 0, log.read_text()
            assert time.monotonic() - started < launch.grace_seconds

    output = log.read_text()
    assert "ERROR" not in output and "Traceback" not in output, output
    assert f"received {launch.kill_signal.name}" in output


def test_fly_scrapes_the_metrics_the_app_serves(default_project: Path) -> None:
    config = platforms.fly_config(default_project)
    served = app_setting(default_project, "METRICS_PATH", {})
    assert config["metrics"] == {"port": config["http_service"]["internal_port"], "path": served}


# --- Railway ----------------------------------------------------------------


def test_railway_builds_the_dockerfile(every_target_project: Path) -> None:
    config = platforms.railway_config(every_target_project)
    assert config["$schema"] == "https://railway.com/railway.schema.json"
    assert config["build"]["builder"] == "DOCKERFILE"
    assert (every_target_project / config["build"]["dockerfilePath"]).is_file()


def test_railway_checks_the_health_path_the_app_serves(every_target_project: Path) -> None:
    served = app_setting(every_target_project, "HEALTH_PATH", {})
    assert platforms.railway_config(every_target_project)["deploy"]["healthcheckPath"] == served


def test_railway_durations_are_json_numbers(every_target_project: Path) -> None:
    """Railway's parser refuses "30" where it expects 30."""
    deploy = platforms.railway_config(every_target_project)["deploy"]
    for key in ("healthcheckTimeout", "drainingSeconds", "restartPolicyMaxRetries"):
        assert type(deploy[key]) is int, key


# --- Kubernetes -------------------------------------------------------------


@pytest.mark.parametrize("use_redis", [True, False], ids=["redis", "no-redis"])
def test_kubernetes_manifests_validate_against_the_api_schema(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    project = bake(use_redis=use_redis, deploy_kubernetes=True)
    manifests = sorted(str(path) for path in (project / "k8s").glob("*.yaml"))
    assert len(manifests) == 2
    result = subprocess.run(
        [require_tool("kubernetes-validate"), "--strict", *manifests],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 2, result.stdout


def test_kubernetes_validation_catches_a_misspelt_field(
    every_target_project: Path, tmp_path: Path
) -> None:
    """The validator above is strict enough to fail on a typo."""
    text = (every_target_project / "k8s" / "deployment.yaml").read_text()
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace("periodSeconds:", "periodSecond:"))
    result = subprocess.run(
        [require_tool("kubernetes-validate"), "--strict", str(broken)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0


def test_kubernetes_service_routes_to_the_deployments_pods(every_target_project: Path) -> None:
    manifests = platforms.kubernetes_manifests(every_target_project)
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {
        port["name"] for port in platforms.kubernetes_container(every_target_project)["ports"]
    }
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names


def test_kubernetes_container_listens_where_its_probes_look(every_target_project: Path) -> None:
    container = platforms.kubernetes_container(every_target_project)
    (port,) = container["ports"]
    launch = platforms.kubernetes(every_target_project)
    image = platforms.read_dockerfile(every_target_project / "Dockerfile")
    assert port["containerPort"] == launch.port == int(image.env["PORT"])
    served = app_setting(every_target_project, "HEALTH_PATH", {})
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": served, "port": port["name"]}, probe


def test_kubernetes_stops_after_a_pre_stop_sleep_within_the_grace_period(
    every_target_project: Path,
) -> None:
    container = platforms.kubernetes_container(every_target_project)
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    # The grace period itself, minus the sleep, is checked against
    # SHUTDOWN_TIMEOUT by test_shutdown_timeout_fits_in_the_platform_grace_period.


def test_kubernetes_runs_as_the_images_unprivileged_user(every_target_project: Path) -> None:
    pod = platforms.kubernetes_manifests(every_target_project)["Deployment"]["spec"]["template"]
    context = pod["spec"]["securityContext"]
    image = platforms.read_dockerfile(every_target_project / "Dockerfile")
    assert context["runAsNonRoot"] is True
    assert str(context["runAsUser"]) == image.user
    container = platforms.kubernetes_container(every_target_project)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_kubernetes_container_requests_and_limits_cpu_and_memory(
    every_target_project: Path,
) -> None:
    resources = platforms.kubernetes_container(every_target_project)["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_kubernetes_reads_redis_url_from_an_optional_secret(bake: Callable[..., Path]) -> None:
    env = platforms.kubernetes_container(bake(deploy_kubernetes=True))["env"]
    (redis_url,) = [var for var in env if var["name"] == "REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"]["optional"] is True
    without = platforms.kubernetes_container(bake(deploy_kubernetes=True, use_redis=False))["env"]
    assert "REDIS_URL" not in {var["name"] for var in without}


# --- Koyeb ------------------------------------------------------------------


def test_koyeb_button_builds_the_dockerfile_and_exposes_its_port(
    every_target_project: Path,
) -> None:
    button = platforms.koyeb_button(every_target_project)
    image = platforms.read_dockerfile(every_target_project / "Dockerfile")
    assert (button["type"], button["builder"]) == ("git", "dockerfile")
    assert button["name"] == "my-websocket-app"
    assert button["ports"] == f"{image.env['PORT']};http;/"


def test_koyeb_button_checks_the_health_path_the_app_serves(every_target_project: Path) -> None:
    button = platforms.koyeb_button(every_target_project)
    port = button["ports"].split(";")[0]
    served = app_setting(every_target_project, "HEALTH_PATH", {})
    assert (button[f"hc_protocol[{port}]"], button[f"hc_path[{port}]"]) == ("http", served)


def test_koyeb_section_appears_only_when_asked_for(bake: Callable[..., Path]) -> None:
    assert "### Koyeb" not in platforms.readme(bake())
    assert "### Koyeb" in platforms.readme(bake(deploy_koyeb=True))
