"""What the dashboards show, read back with the trackers' own formats: W&B's run file and media files, TensorBoard's
EventAccumulator, Optuna's API. Runs are tiny `archlab fit` commands in this process (W&B offline)."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from lightning.pytorch.loggers import WandbLogger
from mlflow import MlflowClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import wandb_records
from archlab import cli
from archlab.sweep import main as sweep_main
from archlab.sweep.trial import TrialRecorder
from archlab.tracking import BestInSummary

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test here trains (about 80 s in all)
# A VAE on digits, a few batches an epoch: sample grids, reconstructions and interpolations every validation.
VAE = [
    "-c", str(ROOT / "configs/vae_digits.yaml"), "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false", "--model.fid_samples", "32",
]  # fmt: skip


def fit(tmp_path: Path, *args: str, name: str) -> Path:
    assert cli.main(["fit", *VAE, "--run_dir", str(tmp_path / name), *args]) == 0
    return tmp_path / name


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit(tmp_path_factory.mktemp("wandb"), "--tracker", "wandb", name="run")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_wandb_images_are_real_pictures_captioned_at_the_step_of_their_epochs_scalars(
    wandb_run: Path, tmp_path: Path
) -> None:
    run_file = wandb_records.run_file(wandb_run)
    media = run_file.parent / "files"
    rows = wandb_records.history(run_file)
    images = [row for row in rows if "val/samples/filenames" in row]
    assert len(images) == 3  # one grid per validation epoch
    grids = [pixels(media / row["val/samples/filenames"][0]) for row in images]
    for grid, row in zip(grids, images, strict=True):
        assert grid.std() > 10  # not the black (all 0 or 1) picture of float tensors cast to uint8
        assert min(grid.shape[:2]) >= 384  # 64 digits of 8x8 upscaled to be readable
        assert row["val/samples/captions"][0].startswith(f"epoch {images.index(row)}: 64 samples")
    assert not np.array_equal(grids[0], grids[-1])  # the generator learns: epochs differ
    # Each grid is at the trainer step of its epoch's validation scalars.
    val_steps = [row["trainer/global_step"] for row in rows if "val/loss" in row]
    assert [row["trainer/global_step"] for row in images] == val_steps

    # The same run with the CSV tracker writes the same pictures as PNG files (CPU runs are deterministic).
    csv_run = fit(tmp_path, "--tracker", "csv", name="csv")
    pngs = sorted((csv_run / "images").glob("val_samples_epoch*.png"))
    assert len(pngs) == 3
    assert np.array_equal(pixels(pngs[-1]), grids[-1])


def test_wandb_summary_holds_the_best_value_and_the_best_checkpoint_is_an_artifact(wandb_run: Path) -> None:
    run_file = wandb_records.run_file(wandb_run)
    losses = [(row["epoch"], row["val/loss"]) for row in wandb_records.history(run_file) if "val/loss" in row]
    best_epoch, best = min(losses, key=lambda pair: pair[1])
    summary = wandb_records.summary(run_file)
    assert summary["val/loss"] == {"min": best}  # W&B's own summary of the monitored metric: its best
    assert summary["best/val/loss"] == best and summary["best/epoch"] == best_epoch
    assert "test/loss" in summary  # the best checkpoint's test metrics
    (artifact,) = wandb_records.of_type(run_file, "artifact")
    assert artifact.type == "model" and set(artifact.aliases) == {"best", "latest"}
    assert [entry.path for entry in artifact.manifest.contents] == ["best.ckpt"]
    (run,) = wandb_records.of_type(run_file, "run")
    assert list(run.tags) == ["Reconstruction", "AutoEncoder", "Digits"]
    # The learning-rate curve of the one-cycle schedule, every step.
    rates = [row["lr-AdamW/pg1"] for row in wandb_records.history(run_file) if "lr-AdamW/pg1" in row]
    assert len(rates) == 9 and rates[-1] < rates[0] / 10  # annealed over the run


def test_a_test_run_names_the_run_it_evaluates(wandb_run: Path, tmp_path: Path) -> None:
    ckpt = wandb_run / "checkpoints/best.ckpt"
    args = ["test", "-c", str(wandb_run / "config.yaml"), "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "t")]
    assert cli.main([*args, "--tracker", "wandb"]) == 0
    config = {}
    for record in wandb_records.of_type(wandb_records.run_file(tmp_path / "t"), "config"):
        config.update(wandb_records.items(record.update))
    assert config["source_run"] == str(wandb_run)
    assert config["source_wandb_id"] == (wandb_run / "wandb_id").read_text().strip()


def test_tensorboard_gets_the_images_and_an_hparams_view_of_the_results(tmp_path: Path) -> None:
    run = fit(tmp_path, "--tracker", "tensorboard", name="tb")
    # The run's event files, read as TensorBoard reads a run (fit, then test and the results, each write one).
    accumulator = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"val/samples", "val/reconstructions", "val/interpolation"} <= set(tags["images"])
    samples = accumulator.Images("val/samples")
    assert len(samples) == 3
    picture = np.asarray(Image.open(io.BytesIO(samples[-1].encoded_image_string)).convert("RGB"))
    assert picture.std() > 10
    content = accumulator.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = session.session_start_info.hparams
    assert params["model/params"].number_value > 0
    assert params["model.init_args.lr"].number_value > 0
    assert "trainer.enable_checkpointing" not in params  # Trainer options left at their defaults are no columns
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"best/val/loss", "best/epoch", "test/loss"} <= metrics
    assert "hp_metric" not in metrics


def test_a_sweep_trial_names_its_wandb_run_and_the_objective_is_named(tmp_path: Path) -> None:
    spec = {
        "base": str(ROOT / "configs/cnn_digits.yaml"),
        "fixed": {
            "trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
            "trainer.enable_progress_bar": False, "model.net.channels": [8], "model.net.hidden_dim": 16,
        },
        "space": {"model.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "sampler": "random", "pruner": "none", "n_trials": 1, "tracker": "wandb", "test_after_fit": False,
        "runs_root": str(tmp_path / "runs"), "study_name": "named",
    }  # fmt: skip
    path = tmp_path / "named.yaml"
    path.write_text(json.dumps(spec))
    assert sweep_main(["-c", str(path)]) == 0
    study = optuna.load_study(study_name="named", storage=f"sqlite:///{tmp_path}/runs/named/study.db")
    assert study.metric_names == ["val/acc"]  # optuna-dashboard's and the plots' name for the objective
    (trial,) = study.trials
    record = trial.user_attrs["wandb"]
    run_file = wandb_records.run_file(Path(trial.user_attrs["run_dir"]))
    assert run_file.name == f"run-{record['id']}.wandb" and Path(record["dir"]) == run_file.parent
    assert wandb_records.summary(run_file)["optuna/state"] == "complete"


def test_a_pruned_trials_wandb_run_says_so(tmp_path: Path) -> None:
    import wandb

    run = wandb.init(mode="offline", dir=tmp_path, project="archlab")
    trainer = SimpleNamespace(loggers=[WandbLogger(experiment=run)], is_global_zero=True)
    TrialRecorder.on_exception(None, trainer, None, optuna.TrialPruned("pruned at epoch 1"))
    run.finish()
    run_file = wandb_records.run_file(tmp_path)
    assert wandb_records.summary(run_file)["optuna/state"] == "pruned"
    assert "pruned" in wandb_records.of_type(run_file, "run")[-1].tags


def test_mlflow_holds_the_metrics_params_images_and_best_checkpoint_of_a_run(tmp_path: Path) -> None:
    run_dir = fit(tmp_path, "--tracker", "mlflow", name="mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vae_digits").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["task"] == "Reconstruction"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(losses) == 3
    assert run.data.metrics["best/val/loss"] == min(losses)
    assert run.data.metrics["best/epoch"] == losses.index(min(losses))
    assert float(run.data.params["model/init_args/lr"]) > 0 and int(run.data.params["model/params"]) > 0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    samples = sorted(p for p in images if "val_samples" in p)
    assert len(samples) == 3
    local = Path(client.download_artifacts(run.info.run_id, samples[-1], str(tmp_path)))
    assert pixels(local).std() > 10


def test_the_wandb_summary_of_a_metric_that_peaks_mid_run_holds_the_peak(tmp_path: Path) -> None:
    import wandb

    run = wandb.init(mode="offline", dir=tmp_path, project="archlab")
    trainer = SimpleNamespace(loggers=[WandbLogger(experiment=run)], is_global_zero=True)
    BestInSummary("val/acc", "max").on_fit_start(trainer, None)
    for step, acc in enumerate([0.5, 0.9, 0.7]):  # the best epoch is the middle one, not the last
        run.log({"val/acc": acc, "trainer/global_step": step})
    run.finish()
    assert wandb_records.summary(wandb_records.run_file(tmp_path))["val/acc"] == {"max": 0.9}
