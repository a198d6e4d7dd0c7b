"""Sequence tasks: BERT's masking and its loss, exact match on padded targets, greedy decoding and sampling, bits per
character, special tokens from the data, and a text run through the real CLI from fit to test and predict from the
saved run, with the vocabulary found again."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from archlab.cli import main, run
from archlab.data import Dates
from archlab.errors import ConfigError
from archlab.models import BERT, GPT, Transformer
from archlab.predictions import Table
from archlab.tasks import LanguageModeling, MaskedLanguageModeling, Seq2Seq
from archlab.tasks.masked_lm import IGNORE, mask_tokens

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT = ["--model.net.dim", "16", "--model.net.num_heads", "2", "--model.net.num_layers", "1"]
SPECIALS = {"pad_id": 0, "bos_id": 1, "eos_id": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mask_tokens_selects_15_percent_and_corrupts_80_10_10():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 500), generator=generator)
    ids[:, 0] = 2  # [CLS] is never selected
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=1000, num_specials=5, mask_prob=0.15, generator=generator)
    selected = labels != IGNORE
    assert not selected[:, 0].any()
    assert abs(selected.float().mean().item() - 0.15) < 0.005
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
    masked = (inputs[selected] == 4).float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1 - 0.001) < 0.01  # random may hit the same token (1/995)
    assert (inputs[selected] >= 4).all()


def tiny_transformer(vocab_size: int = 9, max_len: int = 12) -> Transformer:
    return Transformer(vocab_size=vocab_size, max_len=max_len, pad_id=0, dim=16, num_heads=2, num_layers=1, dropout=0.0)


def test_exact_match_ignores_only_the_targets_pad_positions():
    task = Seq2Seq(tiny_transformer(), **SPECIALS)
    target = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 2, 0], [5, 2, 0, 0, 0], [5, 6, 2, 0, 0]])
    pred = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 3, 0], [5, 2, 8, 8, 8], [5, 0, 2, 0, 0]])
    # By hand: equal; wrong at [EOS]; differs only where the target is [PAD]; a [PAD] predicted at a real position.
    exact = [1, 0, 1, 0]
    metric = task.val_metrics
    metric.update(pred, target)
    assert metric.compute()["val/exact_match"] == pytest.approx(sum(exact) / 4)
    metric.update(target[:1], target[:1])  # a second batch: the mean is over sequences, not batches
    assert metric.compute()["val/exact_match"] == pytest.approx((sum(exact) + 1) / 5)


def test_greedy_decoding_takes_the_argmax_and_pads_after_eos():
    torch.manual_seed(0)
    net = tiny_transformer().eval()
    task = Seq2Seq(net, **SPECIALS)
    src = torch.randint(3, 9, (3, 7))
    out = task.greedy(src, 5)
    assert out.shape == (3, 5)
    for i in range(5):
        step = net(src, torch.cat([torch.ones(3, 1, dtype=torch.long), out[:, :i]], 1))[:, -1].argmax(-1)
        running = ~(out[:, :i] == 2).any(1)  # a finished sequence is padded
        assert torch.equal(out[running, i], step[running])


def test_seq2seq_predictions_are_a_table_of_decoded_text(tmp_path: Path):
    data = Dates(num_train=8, num_val=8, num_test=6, batch_size=4)
    shapes = data.shapes
    net = tiny_transformer(shapes["vocab_size"], shapes["max_len"])
    task = Seq2Seq(net, **{key: shapes[key] for key in SPECIALS})
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    table = task.predictions(trainer.predict(task, datamodule=data))
    assert isinstance(table, Table) and not table.index
    assert list(table.columns) == ["source", "prediction", "target", "exact"]
    assert all(len(column) == 6 for column in table.columns.values())
    assert all(isinstance(text, str) for text in table.columns["source"] + table.columns["target"])
    # Greedy outputs are padded after [EOS], so exact match is equality of the decoded texts.
    columns = table.columns
    assert columns["exact"] == [int(p == t) for p, t in zip(columns["prediction"], columns["target"], strict=True)]


@pytest.mark.parametrize("key", ["pad_id", "bos_id", "eos_id"])
def test_seq2seq_special_tokens_come_from_the_data_or_the_config(key: str):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        Seq2Seq(tiny_transformer(), **{k: v for k, v in SPECIALS.items() if k != key})


def tiny_bert(vocab_size: int = 20) -> BERT:
    return BERT(vocab_size=vocab_size, max_len=8, dim=16, num_heads=2, num_layers=1, dropout=0.0)


@pytest.mark.parametrize("key", ["vocab_size", "mask_id", "num_specials"])
def test_mlm_special_tokens_come_from_the_data_or_the_config(key: str):
    shapes = {"vocab_size": 20, "mask_id": 4, "num_specials": 5}
    with pytest.raises(ConfigError, match=f"model.{key}"):
        MaskedLanguageModeling(tiny_bert(), **{k: v for k, v in shapes.items() if k != key})


def test_mlm_loss_is_the_mean_over_the_selected_positions_and_zero_without_any():
    torch.manual_seed(0)
    net = tiny_bert().eval()
    task = MaskedLanguageModeling(net, vocab_size=20, mask_id=4, num_specials=5)
    task.log = lambda *args, **kwargs: None
    ids = torch.randint(5, 20, (4, 8))
    torch.manual_seed(1)
    loss = task.step((ids,), "train")
    torch.manual_seed(1)
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=20, num_specials=5, mask_prob=0.15)
    selected = labels != IGNORE
    assert selected.any()
    torch.testing.assert_close(loss, F.cross_entropy(net(inputs)[selected], labels[selected]))
    specials = torch.randint(0, 5, (4, 8))  # nothing to select: a zero loss that still backpropagates, not NaN
    loss = task.step((specials,), "train")
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_mlm_validation_masks_the_same_positions_every_epoch(tmp_path: Path):
    torch.manual_seed(0)
    ids = torch.randint(5, 20, (16, 8))
    net = tiny_bert()
    task = MaskedLanguageModeling(net, vocab_size=20, mask_id=4, num_specials=5, mask_prob=0.3, schedule="constant")
    seen: dict[int, list[torch.Tensor]] = {}  # the net's inputs in each validation epoch (the net is in eval mode)
    net.register_forward_pre_hook(
        lambda module, args: None if module.training else seen.setdefault(task.current_epoch, []).append(args[0])
    )
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    loader = DataLoader(TensorDataset(ids), batch_size=8)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=loader)
    first, *later = (torch.cat(seen[epoch]) for epoch in range(3))
    assert not torch.equal(first, ids)  # some positions were corrupted
    assert all(torch.equal(first, inputs) for inputs in later)
    assert {"val/loss", "val/acc", "val/ppl"} <= set(trainer.logged_metrics)


class Uniform(nn.Module):
    """A language model that knows nothing: equal logits for every token."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*ids.shape, self.vocab_size)  # (B, T, vocab_size)


def test_uniform_language_model_has_log2_vocab_bits_per_symbol(tmp_path: Path):
    vocab_size, chars_per_symbol = 50, 2.5
    task = LanguageModeling(Uniform(vocab_size), chars_per_symbol=chars_per_symbol)
    ids = torch.randint(vocab_size, (12, 9))
    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=5)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (result,) = trainer.test(task, dataloaders=loader, verbose=False)
    # Cross-entropy against a uniform distribution is ln V nats per symbol, whatever the targets.
    assert result["test/loss"] == pytest.approx(math.log(vocab_size), rel=1e-5)
    assert result["test/ppl"] == pytest.approx(vocab_size, rel=1e-5)
    assert result["test/bpc"] == pytest.approx(math.log2(vocab_size) / chars_per_symbol, rel=1e-5)


def test_top_1_sampling_is_greedy():
    torch.manual_seed(0)
    net = GPT(vocab_size=11, max_len=6, dim=16, num_heads=2, num_layers=1).eval()
    task = LanguageModeling(net, top_k=1, sample_len=8)
    out = task.generate(torch.tensor([[3, 4]]))
    assert out.shape == (1, 10)
    for t in range(2, 10):
        assert out[0, t] == net(out[:, max(0, t - 6) : t])[0, -1].argmax()  # the context window is cropped to max_len


def test_text_run_finds_its_vocabulary_again_in_test_and_predict(tmp_path: Path):
    runs = tmp_path / "runs"
    fit = run([
        "fit", "-c", str(ROOT / "configs/gpt_charlm.yaml"), *TINY_GPT, "--data.vocab", "bpe", "--data.vocab_size",
        "300", "--data.seq_len", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2", "--tracker", "csv", "--runs_root", str(runs),
    ])  # fmt: skip
    # Two steps leave the model near its initialisation, which predicts all tokens about equally: log2 V bits per
    # token, over the characters a token covers.
    shapes = fit.datamodule.shapes
    uniform = math.log2(shapes["vocab_size"]) / shapes["chars_per_symbol"]
    assert fit.results["test/bpc"] == pytest.approx(uniform, rel=0.05)
    saved = (fit.run_dir / "tokenizer.json").read_text()
    best = fit.run_dir / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["TextCorpus"]["vocabulary"] == saved
    common = ["-c", str(fit.run_dir / "config.yaml"), "--ckpt_path", str(best), "--tracker", "csv"]
    tested = run(["test", *common, "--runs_root", str(runs), "--trainer.limit_test_batches", "2"])
    assert tested.datamodule.vocabulary.to_json() == saved
    predicted = run([
        "predict", *common, "--runs_root", str(runs), "--data.prompt", "The module", "--data.num_samples", "2",
        "--model.sample_len", "20", "--run_dir", str(tmp_path / "predict"),
    ])  # fmt: skip
    assert predicted.datamodule.vocabulary.to_json() == saved
    samples = (tmp_path / "predict" / "samples.txt").read_text()
    assert samples.count("=== sample") == 2 and samples.count("The module") == 2


@pytest.mark.parametrize(
    ("config", "args", "words"),
    [
        ("rnn_adding", ["--model.net.cell", "lsmt"], ["lsmt"]),
        ("lstm_adding", ["--data.seq_len", "1"], ["data.seq_len", "T", ">= 2"]),
        ("gpt_charlm", ["--data.path", "{tmp}/empty.txt"], ["empty.txt", "holds no text"]),
        ("bert_topics", ["--init_from", "{tmp}/nowhere.ckpt"], ["nowhere.ckpt", "does not exist"]),
    ],
)
def test_bad_input_is_one_clear_paragraph(config, args, words, tmp_path: Path, capsys):
    (tmp_path / "empty.txt").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = main(["fit", "-c", str(ROOT / f"configs/{config}.yaml"), *args, "--runs_root", str(tmp_path / "runs")])
    except SystemExit as exit:  # jsonargparse's own errors (a value outside a Literal) exit directly
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert all(word in err for word in words), err[-2000:]
    assert not (tmp_path / "runs").exists()


def test_copy_memory_tagging_scores_the_answer_only(tmp_path: Path):
    import lightning as L

    from archlab.data import CopyMemory
    from archlab.models import RecurrentNet
    from archlab.tasks import SequenceTagging

    data = CopyMemory(seq_len=5, copy_len=3, num_symbols=4, num_train=16, num_val=8, num_test=8, batch_size=8)
    net = RecurrentNet(cell="gru", vocab_size=data.shapes["vocab_size"], num_classes=data.shapes["num_classes"],
                       dim=8, hidden_dim=8)  # fmt: skip
    task = SequenceTagging(net, answer_len=data.shapes["answer_len"])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=data)
    (tested,) = trainer.test(task, datamodule=data, verbose=False)
    data.setup()
    x, y = data.dataset("test").x, data.dataset("test").y
    with torch.no_grad():
        expected = (task.net(x)[:, -3:].argmax(-1) == y[:, -3:]).float().mean()  # the answer only, not the blanks
    assert tested["test/acc"] == pytest.approx(float(expected), abs=1e-6)
