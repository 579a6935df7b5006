"""Remove the files of platforms that were not selected; print next steps.

Deterministic on purpose: no network, no subprocess (no git init, no pip).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")

#: The image that Fly.io, Railway, Koyeb and Kubernetes all build.
CONTAINER_IMAGE = ["Dockerfile", ".dockerignore"]

#: Each option and the files that exist for it: a yes/no option by its name,
#: a choice as "name=value". A file listed under several options stays when
#: any of them is selected.
OWNED_FILES: dict[str, list[str]] = {
    "package_manager=pip": ["requirements.txt", "requirements-dev.txt"],
    "package_manager=uv": ["uv.lock"],
    "deploy_heroku": ["app.json"],
    "deploy_fly": ["fly.toml", *CONTAINER_IMAGE],
    "deploy_render": ["render.yaml"],
    "deploy_railway": ["railway.json", *CONTAINER_IMAGE],
    "deploy_koyeb": CONTAINER_IMAGE,
    "deploy_kubernetes": ["k8s/deployment.yaml", "k8s/service.yaml", *CONTAINER_IMAGE],
    "use_redis": [
        "{{ cookiecutter.package_name }}/redis_broker.py",
        "{{ cookiecutter.package_name }}/workers.py",
        "tests/test_redis.py",
        "tests/test_cluster.py",
    ],
}


def is_selected(option: str) -> bool:
    name, is_choice, value = option.partition("=")
    return ANSWERS[name] == value if is_choice else ANSWERS[name] is True


def remove_unselected(project: Path) -> None:
    selected = {
        path for option, paths in OWNED_FILES.items() if is_selected(option) for path in paths
    }
    owned = {path for paths in OWNED_FILES.values() for path in paths}
    for path in owned - selected:
        (project / path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a directory left empty goes too
            (project / path).parent.rmdir()


NEXT_STEPS = """
Created {slug}/. Next steps:
{commands}
README.md explains how to deploy it.
"""

#: The first commands to run, by package manager.
FIRST_COMMANDS = {
    "pip": """
    cd {slug}
    python3 -m venv .venv && . .venv/bin/activate
    pip install -r requirements-dev.txt
    honcho start          # then open http://localhost:5000/healthz
    pytest                # the project's own tests
""",
    "uv": """
    cd {slug}
    uv run honcho start   # then open http://localhost:5000/healthz
    uv run pytest         # the project's own tests
""",
}

if __name__ == "__main__":
    remove_unselected(Path.cwd())
    slug = ANSWERS["project_slug"]
    commands = FIRST_COMMANDS[str(ANSWERS["package_manager"])].format(slug=slug)
    print(NEXT_STEPS.format(slug=slug, commands=commands))
