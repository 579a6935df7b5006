"""A project generated from an older template updates to this one with cruft.

The "older template" is a real commit of this repository; the newer one is
the working tree as it is now (committed into a throwaway clone), so the
test covers uncommitted changes too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IN_CI, TEMPLATE, require_tool

#: The template as it was released before issue 7 (no ci.yml, no loadtest).
OLDER_RELEASE = "7a51cd0fc070f038aa7391e7bdbffcd429833ee2"

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def run(*command: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def environment(cli_environment: dict[str, str]) -> dict[str, str]:
    require_tool("git")
    return {**cli_environment, **GIT_IDENTITY, "PATH": os.environ["PATH"]}


@pytest.fixture
def template_repository(tmp_path: Path, environment: dict[str, str]) -> Path:
    """A clone of this repository whose last commit is the current working tree."""
    has_release = subprocess.run(
        ["git", "cat-file", "-e", f"{OLDER_RELEASE}^{{commit}}"], cwd=TEMPLATE
    )
    if has_release.returncode != 0:
        message = f"commit {OLDER_RELEASE[:7]} is not in this clone (shallow?)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    clone = tmp_path / "template"
    run("git", "clone", "-q", str(TEMPLATE), str(clone), cwd=tmp_path, env=environment)
    listed = run(
        "git",
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
        cwd=TEMPLATE,
        env=environment,
    )
    run("git", "rm", "-q", "-r", ".", cwd=clone, env=environment)
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    run("git", "add", "-A", cwd=clone, env=environment)
    run("git", "commit", "-q", "--allow-empty", "-m", "working tree", cwd=clone, env=environment)
    return clone


def relative_files(project: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(project)): path.read_bytes()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(project).parts
    }


def test_an_older_project_updates_keeping_the_users_changes(
    tmp_path: Path,
    environment: dict[str, str],
    template_repository: Path,
) -> None:
    cruft = require_tool("cruft")
    output = tmp_path / "projects"
    run(
        cruft,
        "create",
        str(template_repository),
        "--checkout",
        OLDER_RELEASE,
        "--no-input",
        "--output-dir",
        str(output),
        cwd=tmp_path,
        env=environment,
    )
    project = output / "my-websocket-app"
    assert not (project / ".github/workflows/ci.yml").exists()  # it really is older

    # The user's own work, committed: cruft refuses to update a dirty tree.
    rooms = project / "my_websocket_app" / "rooms.py"
    rooms.write_text(rooms.read_text().replace('DEFAULT_ROOM = "lobby"', 'DEFAULT_ROOM = "hall"'))
    (project / "my_websocket_app" / "commands.py").write_text('"""The user\'s own module."""\n')
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "mine"]):
        run("git", *command, cwd=project, env=environment)

    run(cruft, "update", "--skip-apply-ask", cwd=project, env=environment)

    updated = relative_files(project)
    assert not [name for name in updated if name.endswith((".rej", ".orig"))]
    for name, content in updated.items():
        assert b"<<<<<<<" not in content and b">>>>>>>" not in content, name
    assert 'DEFAULT_ROOM = "hall"' in updated["my_websocket_app/rooms.py"].decode()
    assert "my_websocket_app/commands.py" in updated

    # Apart from the user's changes, the project is what the new template bakes.
    run(
        cruft,
        "create",
        str(template_repository),
        "--no-input",
        "--output-dir",
        str(tmp_path / "fresh"),
        cwd=tmp_path,
        env=environment,
    )
    fresh = relative_files(tmp_path / "fresh" / "my-websocket-app")
    user_files = {"my_websocket_app/rooms.py", "my_websocket_app/commands.py", ".cruft.json"}
    assert {name for name in updated if name not in user_files} == set(fresh) - user_files
    for name in set(fresh) - user_files:
        assert updated[name] == fresh[name], name
    users_rooms = updated["my_websocket_app/rooms.py"].decode()
    assert users_rooms.replace('"hall"', '"lobby"').encode() == fresh["my_websocket_app/rooms.py"]

    head = run("git", "rev-parse", "HEAD", cwd=template_repository, env=environment).strip()
    assert json.loads(updated[".cruft.json"])["commit"] == head


def test_the_hooks_stay_quiet_and_local_when_cruft_reruns_them(
    tmp_path: Path, environment: dict[str, str], template_repository: Path
) -> None:
    """cruft renders the template again in a temporary directory on update:
    the hooks must not touch anything outside the project they render."""
    cruft = require_tool("cruft")
    output = tmp_path / "projects"
    run(
        cruft,
        "create",
        str(template_repository),
        "--no-input",
        "--output-dir",
        str(output),
        cwd=tmp_path,
        env=environment,
    )
    assert sorted(p.name for p in output.iterdir()) == ["my-websocket-app"]
    before = sorted(p.name for p in tmp_path.iterdir())
    project = output / "my-websocket-app"
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "generated"]):
        run("git", *command, cwd=project, env=environment)
    assert "up to date" in run(cruft, "check", cwd=project, env=environment)
    run(cruft, "update", "--skip-apply-ask", cwd=project, env=environment)
    assert run("git", "status", "--porcelain", cwd=project, env=environment) == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before
