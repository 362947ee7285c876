"""What a submitted Ray job carries: the command line it runs, its ``working_dir`` and its
environment, with credentials kept off the command line and out of the upload (see
``pipelines.cluster.jobs``)."""

import fnmatch
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from pipelines.config.typed import ConfigError
from pipelines.tracking.secrets import has_secret, is_secret_key

IN_JOB_ENV = "SSLPIPE_IN_RAY_JOB"  # set in a submitted job: print the summary with the marker
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout a job uploads
# never uploaded with the job (gitignore syntax, relative to the project root; Ray also honours
# the project's .gitignore): environments, local data, local runs
EXCLUDES = [
    "/.git",
    "/.venv",
    "/venv",
    "/data",
    "/sslpipe-data",
    "/sslpipe-runs",
    "/runs",
    "/mlruns",
    "/mlartifacts",
    "*.db",
    "__pycache__",
]
# untracked files of these names never go with a job (gitignore syntax, any directory)
SECRET_FILES = [
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "credentials*",
    "*.p12",
    "*.pfx",
    ".netrc",
    ".pgpass",
    "id_rsa*",
    "id_ed25519*",
]
UPLOAD_SECRET_FILES_ENV = "SSLPIPE_JOB_UPLOAD_SECRET_FILES"  # "1": upload them anyway
SECRET_ARG_ENV = "SSLPIPE_JOB_SECRET_"  # + index: an argument that holds a credential


def job_argv(argv: list[str]) -> list[str]:
    """The command line the job runs: ``--address``, ``--no-resource-check`` and
    ``--summary-json`` removed (the summary comes back in the log), a local ``--config`` file
    inlined as ``--set`` pairs ahead of the user's own (same precedence: file < --set < flags)."""
    out: list[str] = []
    config_sets: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token.partition("=")
        takes_value = name in ("--address", "--summary-json", "--config")
        # argparse accepts abbreviations; the options removed here must be found
        removed = ("--address", "--summary-json", "--config")
        if len(name) > 2 and not takes_value and any(o.startswith(name) for o in removed):
            raise ConfigError(f"{name}: with --address, spell this option in full")
        if takes_value and not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} expects a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name == "--config":
            if Path(value).is_file():
                config_sets += config_as_sets(value)
            else:  # a path on the cluster (e.g. a mounted ConfigMap)
                out += ["--config", value]
        elif not takes_value and name != "--no-resource-check":
            out.append(token)
    if config_sets:
        # the command name first, then the file's pairs, then everything else
        out = out[:1] + config_sets + out[1:]
    return out


def config_as_sets(path: str) -> list[str]:
    from pipelines.config.layers import read_yaml
    from pipelines.config.typed import flatten

    sets: list[str] = []
    for key, value in flatten(read_yaml(path)).items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    return sets


def secret_file_excludes(root: Path) -> list[str]:
    """:data:`SECRET_FILES` as excludes, with every file git tracks under ``root`` that they
    match let back in (``!/path``); nothing when ``SSLPIPE_JOB_UPLOAD_SECRET_FILES=1``."""
    if os.environ.get(UPLOAD_SECRET_FILES_ENV) == "1":
        return []
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=30
        )
        tracked = out.stdout.decode().split("\0") if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        tracked = []  # no git: every such file is untracked
    keep = [
        f"!/{path}"
        for path in tracked
        if path and any(fnmatch.fnmatch(Path(path).name, p) for p in SECRET_FILES)
    ]
    return SECRET_FILES + keep


def runtime_env_for_job(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "working_dir": str(PROJECT_ROOT),
        "excludes": EXCLUDES + secret_file_excludes(PROJECT_ROOT),
        "env_vars": {IN_JOB_ENV: "1", **(env_vars or {})},
    }


def holds_secret(token: str) -> bool:
    """Whether a command-line argument carries a credential: a URL's password or token, a
    signed query, or ``KEY=VALUE`` with a secret-named key."""
    key, eq, value = token.partition("=")
    return has_secret(token) or bool(eq and value and is_secret_key(key.lstrip("-")))


def job_entrypoint(argv: list[str]) -> tuple[str, dict[str, str]]:
    """The job's shell command, ``python -m pipelines.cli ARGV``, and the environment variables
    it reads the arguments that hold credentials from (Ray runs the entrypoint in a shell)."""
    words, env = ["python", "-m", "pipelines.cli"], {}
    for token in argv:
        if holds_secret(token):
            var = f"{SECRET_ARG_ENV}{len(env)}"
            env[var] = token
            words.append(f'"${{{var}}}"')
        else:
            words.append(shlex.quote(token))
    return " ".join(words), env
