"""Read a baked project's platform files the way each platform reads them.

Each function returns a `Launch`: how that platform starts the app, checks
its health and stops it, with every value taken from the baked files (only
what no file states, like Heroku's 30 s grace period or Render's default
PORT, is a platform constant here).
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
import signal
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from honcho.environ import parse_procfile

HEROKU_GRACE_SECONDS = 30  # SIGKILL 30 s after SIGTERM
HEROKU_WEB_CONCURRENCY = "2"  # what Heroku sets on Basic and Standard-1X dynos
RENDER_DEFAULT_PORT = 10000
RENDER_DEFAULT_SHUTDOWN_DELAY = 30
#: How Heroku's buildpack installs each package-manager file (no file says so).
HEROKU_INSTALL = {
    "requirements.txt": "pip install -r requirements.txt",
    "uv.lock": "uv sync --locked --no-default-groups",
}


@dataclasses.dataclass
class Launch:
    platform: str
    argv: list[str]
    env: dict[str, str]
    health: tuple[str, str] | None  # (method, path); Heroku has no HTTP check
    kill_signal: signal.Signals
    grace_seconds: float
    signal_every_process: bool  # Heroku signals every process of the dyno
    build: list[str]  # shell commands, in the project, before the start

    @property
    def port(self) -> int:
        return int(self.env["PORT"])


@dataclasses.dataclass
class Dockerfile:
    base_image: str
    env: dict[str, str]  # PATH aside: see path
    path: list[str]  # what ENV PATH puts before the base image's $PATH
    workdir: str
    user: str | None
    cmd: Any  # a list for exec form, a string for shell form
    instructions: list[tuple[str, str]]


def read_dockerfile(path: Path) -> Dockerfile:
    """Parse the instructions this template uses (FROM, ENV, USER, CMD)."""
    logical_lines = re.sub(r"\\\n", " ", path.read_text()).splitlines()
    instructions = []
    for line in logical_lines:
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    path = env.pop("PATH", "$PATH").split(":")
    assert path[-1] == "$PATH", "ENV PATH extends the base image's PATH"
    last = {keyword: rest for keyword, rest in instructions}
    cmd_text = last.get("CMD", "")
    try:
        cmd = json.loads(cmd_text)
    except json.JSONDecodeError:
        cmd = cmd_text
    return Dockerfile(
        last["FROM"], env, path[:-1], last["WORKDIR"], last.get("USER"), cmd, instructions
    )


def image_build(image: Dockerfile) -> list[str]:
    """The RUN lines that install the app's dependencies with uv.

    pip's image installs into the base image's Python, which the tests stand
    in for with their own interpreter; uv's installs into a virtualenv,
    which the tests make with the same command.
    """
    return [
        rest for keyword, rest in image.instructions if keyword == "RUN" and rest.startswith("uv ")
    ]


def seconds(duration: int | str) -> float:
    """Fly durations: an integer of seconds, or a string like "30s" or "1m"."""
    if isinstance(duration, int):
        return float(duration)
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, f"not a Fly duration: {duration!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60}[match[2]]


def procfile_web(project: Path) -> str:
    return parse_procfile((project / "Procfile").read_text()).processes["web"]


def fly_config(project: Path) -> dict[str, Any]:
    return tomllib.loads((project / "fly.toml").read_text())


def render_services(project: Path) -> dict[str, dict[str, Any]]:
    """The Blueprint's services, by type."""
    services = yaml.safe_load((project / "render.yaml").read_text())["services"]
    by_type = {service["type"]: service for service in services}
    assert len(by_type) == len(services), "one service of each type"
    return by_type


def render_service(project: Path) -> dict[str, Any]:
    return render_services(project)["web"]


def app_json(project: Path) -> dict[str, Any]:
    return json.loads((project / "app.json").read_text())


def generated() -> str:
    """A value as the platforms generate one (Heroku: 64 hex digits)."""
    return secrets.token_hex(32)


def package_manager_file(project: Path) -> str:
    (name,) = [name for name in HEROKU_INSTALL if (project / name).exists()]
    return name


def uses_uv(project: Path) -> bool:
    return package_manager_file(project) == "uv.lock"


def heroku(project: Path, port: int) -> Launch:
    config_vars = {
        name: generated() if spec.get("generator") == "secret" else spec["value"]
        for name, spec in app_json(project)["env"].items()
    }
    return Launch(
        platform="heroku",
        argv=["bash", "-c", procfile_web(project)],
        env={**config_vars, "PORT": str(port), "WEB_CONCURRENCY": HEROKU_WEB_CONCURRENCY},
        health=None,
        kill_signal=signal.SIGTERM,
        grace_seconds=HEROKU_GRACE_SECONDS,
        signal_every_process=True,
        build=[HEROKU_INSTALL["uv.lock"]] if uses_uv(project) else [],
    )


def fly(project: Path, port: int | None = None) -> Launch:
    config = fly_config(project)
    image = read_dockerfile(project / config["build"]["dockerfile"])
    env = {**image.env, **config["env"]}
    if port is not None:
        env["PORT"] = str(port)
    (check,) = config["http_service"]["checks"]
    return Launch(
        platform="fly",
        argv=image.cmd,
        env=env,
        health=(check["method"], check["path"]),
        kill_signal=signal.Signals[config["kill_signal"]],
        grace_seconds=seconds(config["kill_timeout"]),
        signal_every_process=False,
        build=image_build(image),
    )


def render(project: Path, port: int | None = None) -> Launch:
    service = render_service(project)
    variables = service.get("envVars", [])
    env = {var["key"]: var["value"] for var in variables if "value" in var}
    env |= {var["key"]: generated() for var in variables if var.get("generateValue")}
    env["PORT"] = str(RENDER_DEFAULT_PORT if port is None else port)
    return Launch(
        platform="render",
        argv=["bash", "-c", service["startCommand"]],
        env=env,
        health=("GET", service["healthCheckPath"]),
        kill_signal=signal.SIGTERM,
        grace_seconds=service.get("maxShutdownDelaySeconds", RENDER_DEFAULT_SHUTDOWN_DELAY),
        signal_every_process=False,
        build=[service["buildCommand"]] if uses_uv(project) else [],
    )


def railway_config(project: Path) -> dict[str, Any]:
    return json.loads((project / "railway.json").read_text())


def railway(project: Path, port: int) -> Launch:
    """Railway builds the Dockerfile, injects PORT, and drains for drainingSeconds."""
    config = railway_config(project)
    image = read_dockerfile(project / config["build"]["dockerfilePath"])
    return Launch(
        platform="railway",
        argv=image.cmd,
        env={**image.env, "PORT": str(port)},
        health=("GET", config["deploy"]["healthcheckPath"]),
        kill_signal=signal.SIGTERM,
        grace_seconds=config["deploy"]["drainingSeconds"],
        signal_every_process=False,
        build=image_build(image),
    )


def kubernetes_manifests(project: Path) -> dict[str, dict[str, Any]]:
    """The manifests under k8s/, by kind."""
    documents = [
        document
        for path in sorted((project / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
    ]
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one manifest of each kind"
    return by_kind


def kubernetes_container(project: Path) -> dict[str, Any]:
    (container,) = kubernetes_manifests(project)["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ]
    return container


def kubernetes(project: Path, port: int | None = None) -> Launch:
    """The kubelet runs the image's CMD with the container's env.

    On deletion it runs the preStop hook, then sends SIGTERM, then SIGKILL
    once terminationGracePeriodSeconds (counted from the start) have passed.
    """
    pod = kubernetes_manifests(project)["Deployment"]["spec"]["template"]["spec"]
    container = kubernetes_container(project)
    image = read_dockerfile(project / "Dockerfile")
    env = {**image.env, **{var["name"]: var["value"] for var in container["env"] if "value" in var}}
    if port is not None:
        env["PORT"] = str(port)
    probe = container["readinessProbe"]["httpGet"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    return Launch(
        platform="kubernetes",
        argv=container.get("command", image.cmd),
        env=env,
        health=("GET", probe["path"]),
        kill_signal=signal.SIGTERM,
        grace_seconds=pod["terminationGracePeriodSeconds"] - pre_stop,
        signal_every_process=False,
        build=image_build(image),
    )


def koyeb_button(project: Path) -> dict[str, str]:
    """The query of the README's Deploy to Koyeb button: Koyeb's only configuration."""
    (url,) = re.findall(r"\(https://app\.koyeb\.com/deploy\?([^)\s]+)\)", readme(project))
    return dict(parse_qsl(url, strict_parsing=True))


def readme(project: Path) -> str:
    return (project / "README.md").read_text()


def koyeb(project: Path, port: int | None = None) -> Launch:
    """Koyeb builds the Dockerfile and sets PORT to the exposed port.

    Its grace period between SIGTERM and SIGKILL is not documented: the
    lifecycle test gives the app SHUTDOWN_TIMEOUT plus the same 5 s margin
    the other platforms leave, and no more.
    """
    button = koyeb_button(project)
    image = read_dockerfile(project / button.get("dockerfile", "Dockerfile"))
    exposed, _, _ = button["ports"].split(";")
    env = {
        **image.env,
        **{key[4:-1]: value for key, value in button.items() if key.startswith("env[")},
        "PORT": exposed if port is None else str(port),
    }
    return Launch(
        platform="koyeb",
        argv=image.cmd,
        env=env,
        health=("GET", button[f"hc_path[{exposed}]"]),
        kill_signal=signal.SIGTERM,
        grace_seconds=float(env["SHUTDOWN_TIMEOUT"]) + 5,
        signal_every_process=False,
        build=image_build(image),
    )
