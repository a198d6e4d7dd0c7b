"""The first hour with archlab: the README's commands as printed, help and `archlab list`, short names, one-paragraph
errors, `--data.download` without a network, and test / predict runs that use what their command line says.

Everything runs in this process (no per-test interpreter start); the two real training runs are a few steps of tiny
nets.
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import torchvision
import yaml

from archlab import __main__ as entry
from archlab import cli
from archlab.sweep import settings as sweep_settings
from archlab.sweep.workers import split_passthrough

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SUBCOMMANDS = ("fit", "validate", "test", "predict", "sweep", "study", "list")
TINY_RESNET = ["--model.net.depth", "8", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]
TINY_GPT = ["--model.net.dim", "16", "--model.net.num_layers", "1", "--model.net.num_heads", "2"]
TINY_GPT += ["--data.seq_len", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"]
TINY_GPT += ["--trainer.limit_val_batches", "1"]


def readme_commands() -> list[list[str]]:
    """Every `archlab ...` command line in the README's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            at = next((i for i, w in enumerate(words) if w == "archlab" and words[i + 1 :][:1] != ["."]), None)
            if at is not None and at + 1 < len(words):
                commands.append(words[at + 1 :])
    return commands


def placeholders(words: list[str], runs: dict[str, Path], tmp: Path) -> list[str]:
    """The README's placeholders made real: a run directory for RUN and runs/<...>/<time>, a config for <exp>."""
    run = runs["gpt"] if "--data.prompt" in words else runs["resnet"]
    line = " ".join(shlex.quote(w) for w in words)
    line = re.sub(r"runs/[\w<>]+/<time>", str(run), line).replace("RUN/", f"{run}/")
    line = line.replace("<exp>", "resnet_digits").replace("<preset>", "cpu").replace("sweeps/<x>", "sweeps/cnn_digits")
    line = re.sub(r"\[(-[^\]]+)\]", r"\1", line).replace(" DIR", f" {tmp}")
    return shlex.split(line)


def fit(args: list[str], runs_root: Path) -> Path:
    assert cli.main(["fit", *args, "--tracker", "csv", "--runs_root", str(runs_root), "--test_after_fit", "false"]) == 0
    (run,) = [p.parent for p in runs_root.glob("*/*/config.yaml")]
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished ResNet run (with best.ckpt) and a GPT run, a few steps each."""
    root = tmp_path_factory.mktemp("runs")
    resnet = fit(["-c", str(ROOT / "configs/resnet_digits.yaml"), *TINY_RESNET], root / "resnet")
    gpt = fit(["-c", str(ROOT / "configs/gpt_charlm.yaml"), *TINY_GPT], root / "gpt")
    return {"resnet": resnet, "gpt": gpt}


def test_the_readme_commands_parse_with_the_real_parser(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    commands = readme_commands()
    assert len(commands) >= 20  # the extraction found the README's commands
    seen = set()
    for words in commands:
        args = placeholders(words, runs, tmp_path)
        seen.add(args[0])
        assert args[0] in SUBCOMMANDS or args == ["--help"], args
        if args == ["--help"] or args[0] == "list":
            assert entry.main(args) == 0
        elif any(arg == "--help" or arg.endswith(".help") for arg in args):
            with pytest.raises(SystemExit) as exited:
                cli.parse(args)
            assert exited.value.code == 0
        elif args[0] == "sweep":
            own, passthrough = split_passthrough(args[1:])
            cfg = sweep_settings.make_parser().parse_args(own)
            sweep_file = Path(str(cfg.config[-1]))
            base = [str(sweep_settings.resolve_path(p, sweep_file)) for p in sweep_settings.as_list(cfg.base)]
            cli.parse(["fit", *(a for path in base for a in ("-c", path)), *passthrough])
        elif args[0] != "study":  # the study's own tests check its command lines
            cli.parse(args)
    assert {"fit", "test", "predict", "sweep"} <= seen
    capsys.readouterr()


def test_readme_test_and_predict_run_for_real_into_recognisable_linked_runs(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    lines = [
        w for w in readme_commands() if w[0] in ("test", "predict") and "runs/resnet_digits/<time>/config.yaml" in w
    ]
    assert [w[0] for w in lines] == ["test", "predict"]
    for words in lines:
        args = [*placeholders(words, runs, tmp_path), "--tracker", "csv", "--runs_root", str(tmp_path)]
        assert cli.main(args) == 0
        (made,) = tmp_path.glob(f"resnet_digits/*-{words[0]}")
        status = json.loads((made / "status.json").read_text())
        assert status["status"] == "finished" and status["command"] == words[0]
        assert status["source_run"] == str(runs["resnet"].resolve())
    assert (next(tmp_path.glob("resnet_digits/*-predict")) / "predictions.csv").is_file()


def test_predict_applies_sampling_options_and_refuses_the_others(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = runs["gpt"]
    base = ["-c", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt")]
    base += ["--tracker", "csv", "--runs_root", str(tmp_path)]
    # The README's example, plus a sample length: the checkpoint stored top_k null and sample_len 300.
    args = ["predict", *base, "--data.prompt", "The ", "--model.top_k", "10", "--model.sample_len", "5"]
    assert cli.main(args) == 0
    (made,) = tmp_path.glob("*/*-predict")
    saved = yaml.safe_load((made / "config.yaml").read_text())["model"]["init_args"]
    assert (saved["top_k"], saved["sample_len"]) == (10, 5)
    samples = re.findall(r"=== sample \d+ ===\n(.*?)\n\n", (made / "samples.txt").read_text(), flags=re.S)
    assert samples and all(s.startswith("The ") and len(s) <= len("The ") + 5 for s in samples)

    capsys.readouterr()
    assert cli.main(["predict", *base, "--model.lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--model.lr 0.5" in err and "checkpoint" in err and "--model.top_k" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert len(list(tmp_path.glob("*/*"))) == 1  # no run directory for the refused command


def test_help_and_list_name_every_subcommand_and_what_archlab_offers(capsys: pytest.CaptureFixture) -> None:
    assert entry.main(["--help"]) == 0
    usage = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert re.search(rf"^  {name} +\S", usage, flags=re.M), name
    assert entry.main(["list"]) == 0
    listing = capsys.readouterr().out
    for path in [*(ROOT / "configs").glob("*.yaml"), *(ROOT / "configs/sweeps").glob("*.yaml")]:
        assert str(path.relative_to(ROOT)) in listing, path
    for name in ("ResNet", "GPT", "Classification", "LanguageModeling", "Digits", "CIFAR10", "TextCorpus"):
        assert re.search(rf"^  {name} +\S", listing, flags=re.M), name
    assert "Task " not in listing and "DataModule " not in listing  # bases no config names


def test_short_names_and_help_limited_to_archlabs_classes(capsys: pytest.CaptureFixture) -> None:
    cfg = cli.parse(["fit", "-c", str(ROOT / "configs/cnn_digits.yaml"), "--data", "Digits", "--model.net", "ResNet"])
    assert cfg.data.class_path == "archlab.data.Digits"
    assert cfg.model.init_args.net.class_path == "archlab.models.ResNet"  # not torchvision's or timm's ResNet
    with pytest.raises(SystemExit):
        cli.main(["fit", "--model.help", "Classification"])
    helped = capsys.readouterr().out
    assert "archlab's: AutoEncoder, BERT, CNN" in " ".join(helped.split()) and "full path" in helped
    assert "torch.nn.Linear" not in helped and helped.count("\n") < 100
    with pytest.raises(SystemExit):
        cli.main(["fit", "--data.help", "Digits"])
    assert "--data.batch_size" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-c", "configs/resnet_digits.yaml", "--model.net.dept", "56"], ["--model.net.dept", "--model.net.depth"]),
        (["-c", "configs/resnet_digits.yaml", "--data.batch_sise", "8"], ["--data.batch_sise", "--data.batch_size"]),
        (["-c", "configs/resnet_digits.yaml", "--trainer.max_epohcs", "5"], ["--trainer.max_epochs"]),
        (["-c", "configs/resnet_digits.yaml", "--trainer.max_epochs", "many"], ["max_epochs many", "int or null"]),
        (["-c", "configs/resnet_digits.yaml", "--data", "Digitz"], ["--data Digitz", "did you mean Digits"]),
        (["-c", "configs/resnet_digts.yaml"], ["resnet_digts.yaml: no such file", "configs/resnet_digits.yaml"]),
    ],
)
def test_a_rejected_command_line_is_one_paragraph_naming_the_key_and_the_closest_valid_ones(
    args: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path
) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exited:
        cli.main(["fit", *args, "--runs_root", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error: ") and err.count("\n") == 1, err
    for word in expected:
        assert word in err, (word, err)
    assert not list(tmp_path.iterdir())


def test_download_without_network_fails_at_once_with_one_paragraph_and_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A host that never resolves (RFC 2606), so the test needs no network and never uses one.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "https://archlab-test.invalid/cifar-10-python.tar.gz")
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    args = ["fit", "-c", str(ROOT / "configs/resnet_cifar10.yaml"), "--data.root", str(tmp_path / "data")]
    args += ["--data.download", "true", "--tracker", "csv", "--runs_root", str(tmp_path / "runs")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "archlab-test.invalid:443" in err and "--data.root" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_relative_output_path_lands_in_the_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = ["fit", "-c", str(ROOT / "configs/resnet_digits.yaml"), *TINY_RESNET, "--tracker", "csv"]
    args += ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.dirpath", "mine"]
    args += ["--trainer.callbacks.monitor", "val/acc", "--run_dir", str(run), "--test_after_fit", "false"]
    assert cli.main(args) == 0
    assert list((run / "mine").glob("*.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside it
