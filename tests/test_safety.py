"""Safe loading, secrets and corrupt input (issue 9, guarantees 7-9), through the real `archlab` command.

Every case is one `archlab` process on tiny settings. The module's fixture writes the inputs (malicious pickles whose
payload would create a marker file, truncated and foreign checkpoints, broken images and text files, a local HTTP
server for checkpoint URLs) and starts the selected tests' cases at once on a pool of three, so 41 processes take
about 290 CPU-seconds (Lightning's import is 4 of each process's 6-7): three to five minutes on a shared 2-core
machine. Each test then waits for and checks its own case: the exit status, the file or key named in stderr, no
traceback, and for a payload that its marker file never appeared.
"""

import ast
import functools
import http.server
import json
import os
import pickle
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CNN = ["-c", str(CONFIGS / "cnn_digits.yaml")]
TINY = ["--trainer.fast_dev_run", "true", "--tracker", "csv"]
# A few steps of real training (fast_dev_run writes no checkpoint and no tracker record).
SHORT = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1", "--model.net.channels", "[8]",
]  # fmt: skip

# Secrets a run must never write anywhere: W&B's key (40 characters, as W&B checks), a password inside a URL in a
# config value, a value under a secret-looking key, and a database password (inside a connection URL).
CANARY_WANDB = "CanaryWandbKey".ljust(40, "7")
CANARY_URL = "CanaryUrlPassword77"
CANARY_KEY = "CanaryApiKey77"
CANARY_DB = "CanaryDbPassword77"
CANARIES = (CANARY_WANDB, CANARY_URL, CANARY_KEY, CANARY_DB)

# A user's DataModule that needs credentials (a database, an authenticated URL); it checks that it received the
# real values, since only what a run records is masked.
SECRET_DATA = '''
from archlab.data import Digits


class SecretDigits(Digits):
    """Digits behind credentials."""

    def __init__(self, *, api_key: str, db_url: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if "***" in api_key + db_url:
            raise ValueError("SecretDigits received a masked credential")
'''


class Payload:
    """A pickle that, unpickled in full, creates `marker`: what a planted checkpoint or dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@dataclass
class Case:
    """One `archlab` command and what it must do: exit `code`, name each of `named` in stderr, never create
    `marker`."""

    args: list[str]
    code: int = 2
    named: tuple[str, ...] = ()
    marker: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return "archlab " + " ".join(self.args)


def archlab(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "archlab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """The inputs, the HTTP server and the pool of running cases."""

    def __init__(self, root: Path, wanted: set[str]) -> None:
        self.root = root
        self.wanted = wanted
        self.inputs = root / "inputs"
        self.inputs.mkdir()
        self.work = root / "work"
        self.work.mkdir()
        self.markers = root / "markers"
        self.markers.mkdir()
        (root / "home").mkdir()
        (root / "pythonpath").mkdir()
        (root / "pythonpath" / "secret_data.py").write_text(SECRET_DATA)
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),  # W&B's settings and caches land where the search looks
            "ARCHLAB_CACHE": str(root / "cache"),
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1",  # three runs at once on two cores: no thread oversubscription
            "PYTHONPATH": os.pathsep.join([str(root / "pythonpath"), os.environ.get("PYTHONPATH", "")]),
        }
        self.env.pop("WANDB_API_KEY", None)
        self.pool = ThreadPoolExecutor(max_workers=3)
        self.cases: dict[str, Case] = {}
        self.results: dict[str, Future] = {}
        served = root / "served"
        served.mkdir()
        handler = functools.partial(QuietHandler, directory=str(served))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.served = served
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def marker(self, name: str) -> Path:
        return self.markers / name

    def evil(self, name: str) -> Path:
        """A checkpoint whose unpickling creates markers/<name>."""
        path = self.inputs / name
        torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "x": Payload(self.marker(name))}, path)
        return path

    def run(self, name: str, args: list[str], *named: str, code: int = 2, marker: Path | None = None, **env: str):
        """Start `archlab ARGS` as case `name`, in its own working directory."""
        case = self.cases[name] = Case(args, code=code, named=named, marker=marker, env=env)
        if name not in self.wanted:
            return
        (self.work / name).mkdir()
        self.results[name] = self.pool.submit(archlab, case.args, cwd=self.work / name, env={**self.env, **env})

    def submit(self, name: str, fn: Callable[[], object]) -> None:
        if name in self.wanted:
            self.results[name] = self.pool.submit(fn)

    def result(self, name: str):
        return self.results[name].result()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def check(lab: Lab, name: str) -> subprocess.CompletedProcess:
    case, result = lab.cases[name], lab.result(name)
    output = result.stdout + result.stderr
    assert result.returncode == case.code, f"{case.command}\nexit {result.returncode}\n{output[-3000:]}"
    assert "Traceback" not in output, f"{case.command}\n{output[-3000:]}"
    for named in case.named:
        assert named in result.stderr, f"{case.command}: stderr does not name {named!r}\n{result.stderr[-3000:]}"
    if case.marker is not None:
        assert not case.marker.exists(), f"{case.command}: the payload ran"
    return result


# The cases, by group; the README's Reliability tally counts these.
PAYLOADS = [
    "ckpt_fit", "ckpt_validate", "ckpt_test", "ckpt_predict", "url_fit", "url_test",
    "init_from", "timm_weights", "fid_cache", "cifar_batch", "vocab_path", "yaml_tag",
]  # fmt: skip
CORRUPT = [
    "ckpt_truncated", "ckpt_random", "ckpt_missing", "ckpt_other_arch", "init_from_other_arch", "url_missing",
    "folder_empty", "folder_corrupt_image", "folder_truncated_image",
    "text_empty", "text_binary", "csv_not_utf8", "csv_row_without_label", "csv_without_label_column",
    "jsonl_malformed", "cifar_missing", "cifar_truncated", "fid_cache_corrupt", "one_cycle_10_steps",
]  # fmt: skip
CLASS_PATHS = ["model", "net", "data", "callbacks"]


def other_architecture_checkpoint(path: Path) -> None:
    """An archlab checkpoint of a ResNet, offered to the CNN configs."""
    import lightning

    from archlab.models import ResNet
    from archlab.tasks import Classification

    task = Classification(ResNet(in_channels=1, num_classes=10, depth=8, width=4))
    torch.save({"state_dict": task.state_dict(), "pytorch-lightning_version": lightning.__version__}, path)


def write_image_folder(root: Path, *, n: int = 6) -> Path:
    from PIL import Image

    rng = random.Random(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            pixels = bytes(rng.randrange(256) for _ in range(8 * 8 * 3))
            Image.frombytes("RGB", (8, 8), pixels).save(root / label / f"{i}.png")
    return root


def start(lab: Lab) -> None:
    from formats import write_cifar

    inputs = lab.inputs
    run = lab.run

    # 7. Payloads: a malicious pickle given to every load path.
    for sub in ("fit", "validate", "test", "predict"):
        evil = lab.evil(f"evil_{sub}.ckpt")
        run(f"ckpt_{sub}", [sub, *CNN, "--ckpt_path", str(evil), *TINY], evil.name, marker=lab.marker(evil.name))
    # A URL goes through the same loader whatever the subcommand: two of them are enough.
    for sub in ("fit", "test"):
        served = lab.evil(f"served_{sub}.ckpt")
        served.rename(lab.served / served.name)
        url = f"{lab.url}/{served.name}"
        run(f"url_{sub}", [sub, *CNN, "--ckpt_path", url, *TINY], served.name, marker=lab.marker(served.name))
    evil = lab.evil("evil_init_from.ckpt")
    run("init_from", ["fit", *CNN, "--init_from", str(evil), *TINY], evil.name, marker=lab.marker(evil.name))
    evil = lab.evil("evil_timm.pth")
    timm = ["--model.net", "archlab.models.TimmNet", "--model.net.name", "test_resnet", "--model.net.pretrained"]
    run("timm_weights", ["fit", *CNN, *timm, str(evil), *TINY], evil.name, marker=lab.marker(evil.name))
    fid_cache = inputs / "fid_evil"
    fid_cache.mkdir()
    evil = lab.evil("evil_fid.pt")
    evil.rename(fid_cache / "fid_digits_v1.pt")
    dcgan = ["-c", str(CONFIGS / "dcgan_digits.yaml")]
    run(
        "fid_cache",
        ["fit", *dcgan, *TINY],
        "fid_digits_v1.pt",
        marker=lab.marker(evil.name),
        ARCHLAB_CACHE=str(fid_cache),
    )
    cifar = inputs / "cifar_evil"
    folder = write_cifar(cifar, "cifar10", n_train=40, n_test=20)
    marker = lab.marker("cifar_evil")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": []}, protocol=2))
    resnet_cifar = ["-c", str(CONFIGS / "resnet_cifar10.yaml"), "--model.net.depth", "8"]
    run("cifar_batch", ["fit", *resnet_cifar, "--data.root", str(cifar), *TINY], "data_batch_1", marker=marker)
    evil = lab.evil("evil_vocab.ckpt")
    gpt = ["-c", str(CONFIGS / "gpt_charlm.yaml"), "--model.net.num_layers", "1", "--model.net.dim", "16"]
    run("vocab_path", ["fit", *gpt, "--data.vocab_path", str(evil), *TINY], evil.name, marker=lab.marker(evil.name))
    marker = lab.marker("yaml_tag")
    evil_yaml = inputs / "evil.yaml"
    evil_yaml.write_text(f"trainer:\n  max_epochs: !!python/object/apply:os.system ['touch {marker}']\n")
    run("yaml_tag", ["fit", *CNN, "-c", str(evil_yaml), *TINY], "python/object/apply:os.system", marker=marker)

    # 9. Corrupt or mismatched input.
    other = inputs / "resnet.ckpt"
    other_architecture_checkpoint(other)
    truncated = inputs / "truncated.ckpt"
    truncated.write_bytes(other.read_bytes()[: other.stat().st_size // 2])
    noise = inputs / "random.ckpt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    run("ckpt_truncated", ["test", *CNN, "--ckpt_path", str(truncated), *TINY], truncated.name)
    run("ckpt_random", ["test", *CNN, "--ckpt_path", str(noise), *TINY], noise.name)
    run("ckpt_missing", ["test", *CNN, "--ckpt_path", str(inputs / "absent.ckpt"), *TINY], "absent.ckpt")
    # The ResNet's keys (net.conv1...) are unexpected for the CNN, and the CNN's (net.features...) missing.
    run("ckpt_other_arch", ["test", *CNN, "--ckpt_path", str(other), *TINY], other.name, "net.features", "net.conv1")
    run("init_from_other_arch", ["fit", *CNN, "--init_from", str(other), *TINY], other.name, "features")
    run("url_missing", ["test", *CNN, "--ckpt_path", f"{lab.url}/absent.ckpt", *TINY], "absent.ckpt")

    folder = [*CNN, "--data", "archlab.data.ImageFolder", "--data.image_size", "8", "--data.path"]
    empty = inputs / "empty_folder"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    run("folder_empty", ["fit", *folder, str(empty), *TINY], str(empty / "a"))
    corrupt = write_image_folder(inputs / "corrupt_folder")
    (corrupt / "b" / "3.png").write_bytes(random.Random(1).randbytes(300))
    run("folder_corrupt_image", ["fit", *folder, str(corrupt), *TINY], str(corrupt / "b" / "3.png"))
    cut = write_image_folder(inputs / "truncated_folder")
    image = cut / "a" / "2.png"
    image.write_bytes(image.read_bytes()[:60])
    run("folder_truncated_image", ["fit", *folder, str(cut), *TINY], str(image))

    text_empty = inputs / "empty.txt"
    text_empty.write_text("")
    run("text_empty", ["fit", *gpt, "--data.path", str(text_empty), *TINY], str(text_empty))
    text_binary = inputs / "binary.txt"
    text_binary.write_bytes(random.Random(2).randbytes(4096) + b"\x00")
    run("text_binary", ["fit", *gpt, "--data.path", str(text_binary), *TINY], str(text_binary))
    bert = ["-c", str(CONFIGS / "bert_topics.yaml"), "--model.net.num_layers", "1", "--model.net.dim", "16"]
    bert += ["--data", "archlab.data.TextClassificationFile", "--data.path"]
    rows = [f"text number {i} about {'cats' if i % 2 else 'dogs'},{'cat' if i % 2 else 'dog'}" for i in range(40)]
    latin = inputs / "latin1.csv"
    latin.write_bytes(("text,label\n" + "\n".join(rows) + "\ncaf\xe9 au lait,cat\n").encode("latin-1"))
    run("csv_not_utf8", ["fit", *bert, str(latin), *TINY], str(latin), "line 42")
    short_row = inputs / "short_row.csv"
    short_row.write_text("text,label\n" + "\n".join(rows[:7]) + "\na row without its label\n" + "\n".join(rows[7:]))
    run("csv_row_without_label", ["fit", *bert, str(short_row), *TINY], str(short_row), "line 9", "'label'")
    no_label = inputs / "no_label.csv"
    no_label.write_text("text,category\n" + "\n".join(rows) + "\n")
    run("csv_without_label_column", ["fit", *bert, str(no_label), *TINY], str(no_label), "'label'")
    jsonl = inputs / "malformed.jsonl"
    lines = [f'{{"text": "passage {i}", "label": "{i % 2}"}}' for i in range(40)]
    lines[4] = '{"text": "an unterminated string, "label": "1"}'
    jsonl.write_text("\n".join(lines) + "\n")
    run("jsonl_malformed", ["fit", *bert, str(jsonl), *TINY], str(jsonl), "line 5")

    absent = inputs / "no_cifar"
    run("cifar_missing", ["fit", *resnet_cifar, "--data.root", str(absent), *TINY], str(absent))
    folder = write_cifar(inputs / "cifar_truncated", "cifar10", n_train=40, n_test=20)
    batch = folder / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    run("cifar_truncated", ["fit", *resnet_cifar, "--data.root", str(folder.parent), *TINY], str(batch))
    fid_corrupt = inputs / "fid_corrupt"
    fid_corrupt.mkdir()
    cache = fid_corrupt / "fid_digits_v1.pt"
    cache.write_bytes(random.Random(3).randbytes(2048))
    run("fid_cache_corrupt", ["fit", *dcgan, *TINY], str(cache), code=0, ARCHLAB_CACHE=str(fid_corrupt))
    # OneCycleLR divides by (warmup fraction x steps) - 1, which is 0 for 10 steps at the default warmup of 0.1.
    ten_steps = ["--trainer.max_steps", "10", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
    run("one_cycle_10_steps", ["fit", *CNN, *ten_steps, "--tracker", "csv"], code=0)

    # 7. A class_path outside the expected base class is refused before anything is built.
    for key, option in (("model", "--model"), ("net", "--model.init_args.net"), ("data", "--data")):
        marker = lab.marker(f"class_path_{key}")
        value = json.dumps({"class_path": "os.system", "init_args": {"command": f"touch {marker}"}})
        run(f"class_path_{key}", ["fit", *CNN, option, value, *TINY], key, marker=marker)
    marker = lab.marker("class_path_callbacks")
    value = json.dumps([{"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}])
    run("class_path_callbacks", ["fit", *CNN, "--trainer.callbacks", value, *TINY], "callbacks", marker=marker)

    # 8. Secrets through fit, test and predict, W&B offline; then a fit with W&B online and unreachable.
    offline = ("fit", "test", "predict", "sweep")
    lab.submit("secrets_offline", functools.partial(secret_runs, lab, "offline", offline))
    lab.submit("secrets_online", functools.partial(secret_runs, lab, "online", ("fit",)))


def secret_data_config(lab: Lab) -> Path:
    """The DataModule and its API key in a config file, as a user might keep them."""
    config = lab.inputs / "secret_data.yaml"
    data = {"data": {"class_path": "secret_data.SecretDigits", "init_args": {"api_key": CANARY_KEY}}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


# The database URL and the data URL on the command line, each with its password.
SECRET_ARGS = [
    "--data.db_url", f"postgresql://archlab:{CANARY_DB}@127.0.0.1:1/runs",
    "--data.root", f"https://user:{CANARY_URL}@127.0.0.1:1/digits",
]  # fmt: skip


def secret_runs(
    lab: Lab, mode: str, subcommands: tuple[str, ...]
) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    """fit, then test and predict from the saved run, with every canary in play; each command and its result."""
    cwd = lab.work / f"secrets_{mode}"
    cwd.mkdir()
    env = {**lab.env, "WANDB_API_KEY": CANARY_WANDB, "HOME": str(cwd / "home")}
    if mode == "online":
        env.pop("WANDB_MODE")
        env["WANDB_BASE_URL"] = f"http://127.0.0.1:{closed_port()}"
        env["WANDB_INIT_TIMEOUT"] = "5"
    fit = ["fit", *CNN, "-c", str(secret_data_config(lab)), *SECRET_ARGS, *SHORT, "--tracker", "wandb"]
    done = [(fit, archlab(fit, cwd=cwd, env=env))]
    config = next((cwd / "runs").glob("*/*/config.yaml"), None)
    for sub in subcommands[1:]:
        if config is None or sub == "sweep":
            break
        # The saved config holds "***" for the secrets: the user gives them again, as for the fit.
        best = next(iter(sorted(config.parent.glob("checkpoints/*.ckpt"))), Path("absent.ckpt"))
        ckpt_path = str(best)
        if sub == "test" and best.is_file():  # the checkpoint behind a URL with a password
            (lab.served / f"secrets_{mode}.ckpt").write_bytes(best.read_bytes())
            ckpt_path = lab.url.replace("http://", f"http://user:{CANARY_URL}@") + f"/secrets_{mode}.ckpt"
        args = [sub, "-c", str(config), "--ckpt_path", ckpt_path, "--data.api_key", CANARY_KEY, *SECRET_ARGS]
        done.append((args, archlab([*args, "--tracker", "wandb"], cwd=cwd, env=env)))
    if "sweep" in subcommands:
        # A one-trial sweep with the same secrets in its fixed keys (its Optuna storage is searched too), then one
        # whose storage is a PostgreSQL URL with a password, on a port where nothing listens (exit 3).
        sweep = lab.inputs / f"sweep_{mode}.yaml"  # the user's own file, outside the searched directory
        fixed = {"data.db_url": SECRET_ARGS[1], "data.root": SECRET_ARGS[3], "trainer.max_epochs": 1}
        fixed |= {"trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1, "model.net.channels": [8]}
        spec = {
            "base": [CNN[1], str(secret_data_config(lab))],
            "fixed": fixed,
            "space": {"model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
            "sampler": "random", "pruner": "none", "n_trials": 1, "tracker": "wandb", "study_name": "secrets",
        }  # fmt: skip
        sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
        done.append((["sweep", "-c", str(sweep)], archlab(["sweep", "-c", str(sweep)], cwd=cwd, env=env)))
        outage = [
            "sweep",
            "-c",
            str(sweep),
            "--storage",
            f"postgresql://archlab:{CANARY_DB}@127.0.0.1:{closed_port()}/db",
        ]
        done.append((outage, archlab(outage, cwd=cwd, env=env)))
    return done


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    # Only the cases of the tests selected (-k, a node id) are started.
    selected = [item for item in request.session.items if item.module is request.module and hasattr(item, "callspec")]
    wanted = set()
    for item in selected:
        params = item.callspec.params
        if "name" in params:
            wanted.add(params["name"])
        elif "key" in params:
            wanted.add(f"class_path_{params['key']}")
        elif "mode" in params:
            wanted.add(f"secrets_{params['mode']}")
    lab = Lab(tmp_path_factory.mktemp("safety"), wanted)
    start(lab)
    yield lab
    lab.server.shutdown()
    lab.pool.shutdown(cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAYLOADS)
def test_a_malicious_pickle_is_refused_and_never_runs(lab: Lab, name: str) -> None:
    check(lab, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", CORRUPT)
def test_corrupt_or_mismatched_input_is_named(lab: Lab, name: str) -> None:
    result = check(lab, name)
    if name == "fid_cache_corrupt":  # rebuilt with a warning, and readable again
        from archlab.loading import load_checkpoint

        assert "Training a new FID feature cache" in result.stderr
        cache = Path(lab.cases[name].env["ARCHLAB_CACHE"]) / "fid_digits_v1.pt"
        assert load_checkpoint(cache)["version"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("key", CLASS_PATHS)
def test_a_class_path_outside_the_base_class_is_refused(lab: Lab, key: str) -> None:
    check(lab, f"class_path_{key}")


def test_the_payloads_are_real(tmp_path: Path) -> None:
    """Unpickled in full, the test's malicious files do run: the refusals above are what keeps them inert."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def search(root: Path, canaries: tuple[str, ...]) -> tuple[list[str], int]:
    """(hits as "canary in file", number of files searched) under root."""
    hits, files = [], 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            files += 1
            data = path.read_bytes()
            hits += [f"{canary} in {path.relative_to(root)}" for canary in canaries if canary.encode() in data]
    return hits, files


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_secrets_reach_no_file_and_no_output(lab: Lab, mode: str) -> None:
    runs = lab.result(f"secrets_{mode}")
    for args, result in runs:
        output = result.stdout + result.stderr
        expected = 3 if "--storage" in args else 0  # the sweep whose database cannot be reached
        assert result.returncode == expected, f"archlab {' '.join(args)}\n{output[-3000:]}"
        assert [canary for canary in CANARIES if canary in output] == []
    assert len(runs) == (5 if mode == "offline" else 1)
    cwd = lab.work / f"secrets_{mode}"
    if mode == "online":
        assert "could not be reached" in runs[0][1].stderr
    checkpoints = sorted(cwd.glob("runs/*/*/checkpoints/*.ckpt"))
    assert checkpoints, "the fit wrote no checkpoint"
    for path in checkpoints:  # every checkpoint archlab writes loads without unpickling objects
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        assert checkpoint["datamodule_hyper_parameters"]["api_key"] == "***"
    assert list(cwd.glob("runs/*/*/tracker/wandb/*run-*")) or list(cwd.glob("runs/*/*/**/wandb/*run-*"))
    hits, files = search(cwd, CANARIES)
    assert files >= 5  # the search read the run's files (config, checkpoints, W&B run file, status, ...)
    assert hits == []


SOURCE = ROOT / "platform" / "archlab"
UNSAFE_CALLS = {"yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "pickle.load", "pickle.loads"}
UNSAFE_NAMES = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"}


def dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load, "" for anything that is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def unsafe_uses(source: str) -> list[str]:
    """Unsafe YAML loaders, plain unpickling, a torch.load without weights_only=True, and weights_only=False anywhere
    but where Lightning saves (there it means "the whole training state", not "unpickle in full"): "line: what"."""
    unsafe = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and dotted(node) in UNSAFE_NAMES:
            unsafe.append(f"{line}: {dotted(node)}")
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if name in UNSAFE_CALLS or flags.get("allow_pickle") is True:
            unsafe.append(f"{line}: {name}")
        if name == "torch.load" and flags.get("weights_only") is not True:
            unsafe.append(f"{line}: torch.load without weights_only=True")
        if flags.get("weights_only") is False and not name.endswith("save_checkpoint"):
            unsafe.append(f"{line}: {name}(..., weights_only=False)")
    return unsafe


def test_the_source_check_finds_unsafe_loads() -> None:
    # Assembled from pieces, so that a search of the sources for unsafe loads does not find this test's own sample.
    source = "\n".join(
        [
            "yaml" + ".load(s, Loader=yaml." + "FullLoader)",
            "torch.load(p)",
            "trainer.fit(m, ckpt_path=p, weights_only=False)",
            "pickle.loads(b)",
            "np.load(f, allow_pickle=True)",
            "trainer.save_checkpoint(p, weights_only=False)",
            "yaml.safe_load(s)",
            "torch.load(p, map_location='cpu', weights_only=True)",
        ]
    )
    assert sorted(hit.split(":")[0] for hit in unsafe_uses(source)) == ["1", "1", "2", "3", "4", "5"]


def test_the_source_reads_yaml_and_pickles_only_safely() -> None:
    unsafe = []
    for path in sorted(SOURCE.rglob("*.py")):
        unsafe += [f"{path.relative_to(ROOT)}:{hit}" for hit in unsafe_uses(path.read_text())]
    assert unsafe == []


@pytest.fixture
def served(tmp_path: Path):
    """A local HTTP server over tmp_path/served: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_load_checkpoint_reads_local_files_and_urls(tmp_path: Path, served) -> None:
    from archlab.loading import load_checkpoint

    folder, url = served
    torch.save({"state_dict": {"w": torch.ones(2)}}, folder / "good.ckpt")
    assert torch.equal(load_checkpoint(folder / "good.ckpt")["state_dict"]["w"], torch.ones(2))
    assert torch.equal(load_checkpoint(f"{url}/good.ckpt")["state_dict"]["w"], torch.ones(2))
    with_password = url.replace("http://", "http://user:p%40ss@")  # sent as a Basic auth header
    assert torch.equal(load_checkpoint(f"{with_password}/good.ckpt")["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("write", "error", "words"),
    [
        (None, "DatasetNotFoundError", ["does not exist"]),
        (lambda p: p.write_bytes(b""), "CorruptFileError", ["is empty"]),
        (lambda p: p.write_bytes(random.Random(0).randbytes(999)), "CorruptFileError", ["is not a checkpoint"]),
        (lambda p: p.write_text("state_dict: {}\n"), "CorruptFileError", ["is not a checkpoint"]),
        (lambda p: torch.save([1, 2], p), "CorruptFileError", ["holds a list"]),
        (
            lambda p: (torch.save({"w": torch.ones(99)}, p), p.write_bytes(p.read_bytes()[:300])),
            "CorruptFileError",
            ["truncated"],
        ),
        (lambda p: torch.save({"x": Payload(p.with_name("ran"))}, p), "UnsafeFileError", ["exec", "refused"]),
        (
            lambda p: p.write_bytes(pickle.dumps({"x": Payload(p.with_name("ran"))})),
            "UnsafeFileError",
            ["builtins.exec"],
        ),
    ],
    ids=["missing", "empty", "random", "text", "list", "truncated", "payload", "bare_pickle_payload"],
)
def test_load_checkpoint_errors_name_the_file_and_the_problem(tmp_path: Path, served, write, error, words) -> None:
    from archlab import loading
    from archlab.errors import ArchlabError

    folder, url = served
    path = folder / "file.ckpt"
    if write:
        write(path)
    for source in (path, f"{url}/file.ckpt"):
        with pytest.raises(ArchlabError) as raised:
            loading.load_checkpoint(source, what="--ckpt_path")
        message = str(raised.value)
        assert type(raised.value).__name__ == error
        assert message.startswith(f"--ckpt_path {source if isinstance(source, str) else source.resolve()} ")
        assert all(word in message for word in words), message
        assert "\n" not in message
    assert not (folder / "ran").exists()


def test_a_url_password_never_reaches_the_message(served) -> None:
    from archlab.loading import load_checkpoint

    _folder, url = served
    with pytest.raises(Exception) as raised:
        load_checkpoint(url.replace("http://", f"http://user:{CANARY_URL}@") + "/absent.ckpt")
    assert CANARY_URL not in str(raised.value) and "user:***@" in str(raised.value)


def test_check_state_dict_lists_missing_unexpected_and_reshaped_keys() -> None:
    from archlab.errors import ConfigError
    from archlab.loading import check_state_dict

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3), "head.weight": torch.zeros(2, 3)}
    with pytest.raises(ConfigError) as raised:
        check_state_dict(net, {"state_dict": state}, source="other.ckpt")
    message = str(raised.value)
    assert message.startswith("--ckpt_path other.ckpt was written by another architecture")
    assert "2 key(s) missing from the file: 1.weight, 1.bias" in message
    assert "1 unexpected key(s) in the file: head.weight" in message
    assert "0.weight (3, 5) in the file vs (3, 4)" in message
    check_state_dict(net, net.state_dict(), source="same.ckpt")  # agrees: no error
