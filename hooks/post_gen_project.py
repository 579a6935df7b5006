"""Remove the files of platforms that were not selected; print next steps.

Deterministic on purpose: no network, no subprocess (no git init, no pip).
"""

from __future__ import annotations

import json
from pathlib import Path

ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")

#: Each option and the files that exist only for it.
OWNED_FILES: dict[str, list[str]] = {
    "deploy_heroku": ["app.json"],
    "deploy_fly": ["fly.toml", "Dockerfile", ".dockerignore"],
    "deploy_render": ["render.yaml"],
    "use_redis": [
        "{{ cookiecutter.package_name }}/redis_broker.py",
        "{{ cookiecutter.package_name }}/workers.py",
        "tests/test_redis.py",
    ],
}


def remove_unselected(project: Path) -> None:
    for option, paths in OWNED_FILES.items():
        if ANSWERS[option] is not True:
            for path in paths:
                (project / path).unlink(missing_ok=True)


NEXT_STEPS = """
Created {slug}/. Next steps:

    cd {slug}
    python3 -m venv .venv && . .venv/bin/activate
    pip install -r requirements-dev.txt
    honcho start          # then open http://localhost:5000/healthz
    pytest                # the project's own tests

README.md explains how to deploy it.
"""

if __name__ == "__main__":
    remove_unselected(Path.cwd())
    print(NEXT_STEPS.format(slug=ANSWERS["project_slug"]))
