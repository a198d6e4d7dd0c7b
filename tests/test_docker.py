"""docker/: the images, the compose stack of a distributed sweep, and the SLURM script, read as files.

No image is built here (the suite runs without a Docker daemon): the Dockerfiles and docker/compose.yaml must refer
to files, stages, subcommands, options, ports and environment variables that exist, hold no secrets, and run as a
non-root user.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from archlab import cli
from archlab.sweep.settings import make_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SUBCOMMANDS = {"fit", "validate", "test", "predict", "sweep"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error}, with `env` standing in for the shell."""
    env = env or {}

    def replace(match: re.Match) -> str:
        name, kind, default = match.groups()
        if name in env:
            return env[name]
        assert kind == "-", f"${{{name}}} is required: {default}"
        return default

    return VARIABLE.sub(replace, value)


def variable_of(value: str) -> str:
    match = VARIABLE.fullmatch(value)
    assert match, f"{value!r} is not one ${{VARIABLE}}"
    return match.group(1)


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]}, continuation lines joined; the last stage is also under ''."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = []
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else f"stage{len(result)}"
            result[name] = current
        current.append((instruction, args.strip()))
    result[""] = current
    return result


def last(stage: list[tuple[str, str]], instruction: str) -> str | None:
    found = [args for name, args in stage if name == instruction]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_install_the_project_and_run_archlab_as_a_user(name: str) -> None:
    dockerfile = DOCKER / name
    all_stages = stages(dockerfile)
    final = all_stages[""]
    for stage in all_stages.values():
        for instruction, args in stage:
            if instruction == "COPY":
                *sources, _ = shlex.split(args)
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"
            if instruction in ("ENV", "ARG"):
                assert not SECRET_NAME.search(args), f"{name}: {instruction} {args} bakes a secret in"
    runs = [args for stage in all_stages.values() for instruction, args in stage if instruction == "RUN"]
    assert any("pip install ." in args for args in runs), f"{name}: the project is not installed"
    user = last(final, "USER")
    assert user not in (None, "root", "0"), f"{name}: the image runs as root"
    assert any(f"useradd --create-home --uid 1000 {user}" in args for args in runs)
    assert json.loads(last(final, "ENTRYPOINT")) == ["archlab"]
    command = json.loads(last(final, "CMD"))
    assert command[0] in SUBCOMMANDS
    for i, word in enumerate(command):
        if command[i - 1] == "-c":
            assert (ROOT / word).is_file(), f"{name}: CMD names {word}, which does not exist"
    # The command the image runs by default parses (its configs exist and compose).
    cli.parse_fit([str(ROOT / word) if word.startswith("configs/") else word for word in command[1:]])


def test_dockerignore_keeps_runs_data_and_the_venv_out_of_images() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "data", "wandb", ".git"} <= set(ignored)


def test_compose_workers_share_one_study_on_the_database(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"db", "worker", "dashboard"}
    db, worker, dashboard = services["db"], services["worker"], services["dashboard"]
    # --scale worker=N: no fixed name and no host port that N copies would fight over.
    assert "container_name" not in worker and "ports" not in worker

    command = [interpolate(str(word)) for word in worker["command"]]
    assert command[0] == "sweep" and command[0] in SUBCOMMANDS
    assert make_parser().prog == "archlab sweep"
    sweep_file = command[command.index("-c") + 1]
    assert (ROOT / sweep_file).is_file()
    args = [str(ROOT / word) if word == sweep_file else word for word in command[1:]]
    parsed = make_parser().parse_args(args)  # every option is one `archlab sweep` takes
    assert parsed.runs_root == "/archlab/runs" and parsed.tracker == "csv"
    assert any(mount.endswith(":/archlab/runs") for mount in worker["volumes"])

    # The storage: the db service, PostgreSQL's port, the user and database that PostgreSQL creates, no password.
    url = re.fullmatch(r"postgresql://(\w+)@(\w+):(\d+)/(\w+)", parsed.storage)
    assert url, f"{parsed.storage}: a postgresql:// URL without a password"
    user, host, port, database = url.groups()
    assert host == "db" and port == "5432"
    assert (user, database) == (db["environment"]["POSTGRES_USER"], db["environment"]["POSTGRES_DB"])
    assert db["healthcheck"]["test"] == ["CMD", "pg_isready", "-U", user, "-d", database]
    assert dashboard["command"] == [parsed.storage]

    # One password, from the environment, reaching the database as POSTGRES_PASSWORD and its clients as PGPASSWORD
    # (libpq's variable, as archlab's own sweep workers pass it).
    password = variable_of(db["environment"]["POSTGRES_PASSWORD"])
    assert variable_of(worker["environment"]["PGPASSWORD"]) == password
    assert variable_of(dashboard["environment"]["PGPASSWORD"]) == password
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                variable_of(str(value))  # never a literal secret in the file
    for client in (worker, dashboard):
        assert client["depends_on"]["db"]["condition"] == "service_healthy"


def test_compose_builds_the_stages_and_publishes_the_dashboard_port(compose: dict) -> None:
    for name in ("worker", "dashboard"):
        build = compose["services"][name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        dockerfile = context / build["dockerfile"]
        assert build["target"] in stages(dockerfile), f"{name}: no stage {build['target']!r} in {dockerfile}"
    dashboard_stage = stages(DOCKER / "Dockerfile")["dashboard"]
    entrypoint = json.loads(last(dashboard_stage, "ENTRYPOINT"))
    assert entrypoint[0] == "optuna-dashboard"
    port = entrypoint[entrypoint.index("--port") + 1]
    assert last(dashboard_stage, "EXPOSE") == port
    (published,) = compose["services"]["dashboard"]["ports"]
    assert interpolate(published).split(":") == ["8080", port]
    assert interpolate(published, {"DASHBOARD_PORT": "9000"}) == f"9000:{port}"
    # Build targets: the default target of docker/Dockerfile is the archlab image, not the dashboard.
    assert list(stages(DOCKER / "Dockerfile"))[-2] == "archlab"


def test_slurm_script_runs_the_multinode_preset_under_srun() -> None:
    script = (DOCKER / "slurm/archlab.sbatch").read_text()
    directives = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            directives[key] = value
    # Lightning's SLURM auto-requeue: SIGUSR1 before the time limit, and a job that may be requeued.
    assert directives["signal"].startswith("SIGUSR1@") and "requeue" in directives
    assert int(directives["ntasks-per-node"]) == int(directives["gpus-per-node"])  # one task per GPU
    (launch,) = [line for line in re.sub(r"\\\n\s*", " ", script).splitlines() if line.startswith("srun ")]
    words = shlex.split(launch)
    assert words[1:3] == ["archlab", "fit"]
    assert "configs/trainer/multinode.yaml" in words and (ROOT / "configs/trainer/multinode.yaml").is_file()
    # Its options, with SLURM's values filled in, are ones `archlab fit` takes.
    args = shlex.split(
        launch.replace('"$config"', str(ROOT / "configs/cnn_digits.yaml"))
        .replace('"$SLURM_NNODES"', "4")
        .replace('"$SLURM_NTASKS_PER_NODE"', "8")
        .replace('"$run_dir"', "runs/x/slurm-1")
        .replace('"$@"', "")
        .replace("configs/trainer/multinode.yaml", str(ROOT / "configs/trainer/multinode.yaml"))
    )[3:]
    trainer = cli.parse_fit(args).trainer
    assert (trainer.num_nodes, int(trainer.devices), trainer.strategy) == (4, 8, "ddp")
