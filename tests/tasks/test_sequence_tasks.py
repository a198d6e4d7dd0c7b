"""Sequence tasks: BERT's masking, greedy decoding and sampling, and a text run through the real CLI from fit to
test and predict from the saved run, with the vocabulary found again."""

from pathlib import Path

import pytest
import torch

from archlab.cli import main, run
from archlab.models import GPT, Transformer
from archlab.tasks import LanguageModeling, Seq2Seq
from archlab.tasks.masked_lm import IGNORE, mask_tokens

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT = ["--model.net.dim", "16", "--model.net.num_heads", "2", "--model.net.num_layers", "1"]


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


def test_exact_match_and_greedy_decoding():
    torch.manual_seed(0)
    net = Transformer(vocab_size=9, max_len=12, pad_id=0, dim=16, num_heads=2, num_layers=1, dropout=0.0).eval()
    task = Seq2Seq(net)
    target = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 2]])
    pred = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 3]])
    assert task.exact_match(pred, target).tolist() == [1.0, 0.0]
    src = torch.randint(3, 9, (3, 7))
    out = task.greedy(src, 5)
    assert out.shape == (3, 5)
    for i in range(5):
        step = net(src, torch.cat([torch.ones(3, 1, dtype=torch.long), out[:, :i]], 1))[:, -1].argmax(-1)
        running = ~(out[:, :i] == 2).any(1)  # a finished sequence is padded
        assert torch.equal(out[running, i], step[running])


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
    assert "test/bpc" in fit.results and fit.results["test/bpc"] > 0
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
        ("bert_topics", ["--model.net.pretrained", "{tmp}/nowhere.ckpt"], ["nowhere.ckpt", "does not exist"]),
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
    x, y = data.datasets["test"].x, data.datasets["test"].y
    with torch.no_grad():
        expected = (task.net(x)[:, -3:].argmax(-1) == y[:, -3:]).float().mean()  # the answer only, not the blanks
    assert tested["test/acc"] == pytest.approx(float(expected), abs=1e-6)
