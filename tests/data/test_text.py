"""Text and synthetic sequence DataModules on the bundled corpus and on small files written here."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from archlab.data import AddingProblem, CopyMemory, Dates, TextClassificationFile, TextCorpus, TopicClassification
from archlab.data.text import CLS_ID, PAD_ID, SEP_ID, Vocabulary, pydoc_topics
from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.\nIt was the best of times, it was the worst of times.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse.",
    "In a hole in the ground there lived a hobbit. Not a nasty, dirty, wet hole, filled with the ends of worms.",
] * 3


def write_folder(root: Path, n: int = 6) -> Path:
    folder = root / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(n):
        (folder / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(f"Document {i}. " + ENGLISH[i % 3] * 4)
    (folder / "image.png").write_bytes(b"\x89PNG not text")
    return folder


def test_default_corpus_splits_by_document_deterministically():
    a, b = TextCorpus(seed=1), TextCorpus(seed=1)
    assert a.split_names == b.split_names
    assert a.split_names != TextCorpus(seed=2).split_names
    names = [set(a.split_names[split]) for split in ("train", "val", "test")]
    assert set.union(*names) == set(pydoc_topics())
    assert sum(len(n) for n in names) == len(pydoc_topics())  # each document in exactly one split
    assert a.shapes["vocab_size"] == len(a.vocabulary) and a.shapes["max_len"] == 128
    x, y = next(iter(a.val_dataloader()))
    assert x.shape == (32, 128) and torch.equal(x[:, 1:], y[:, :-1])
    assert a.decode(x[0].tolist()) in a.texts["val"]


def test_streams_continue_from_batch_to_batch():
    dm = TextCorpus(stream=True, seq_len=16, batch_size=4)
    batches = list(dm.train_dataloader())
    assert len(batches) > 2
    (x0, y0), (x1, _) = batches[0], batches[1]
    assert x0.shape == (4, 16)
    assert torch.equal(x1[:, 0], y0[:, -1])  # each row continues its own stream


def test_user_folder_and_file(tmp_path: Path):
    folder = TextCorpus(path=str(write_folder(tmp_path)), seq_len=8, val_fraction=0.2, test_fraction=0.2)
    names = sorted(name for split in folder.split_names.values() for name in split)
    assert names == sorted(f"{'sub/' if i % 2 else ''}doc{i}.txt" for i in range(6))  # the .png is not a document
    single = tmp_path / "book.txt"
    single.write_text("\n\n".join(ENGLISH))
    corpus = TextCorpus(path=str(single), seq_len=8, val_fraction=0.2, test_fraction=0.2, batch_size=2)
    assert sum(len(names) for names in corpus.split_names.values()) == len(ENGLISH)
    assert next(iter(corpus.train_dataloader()))[0].shape == (2, 8)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda p: (p / "empty.txt").write_text("") and None, ConfigError, ["holds no text"]),
        (lambda p: None, DatasetNotFoundError, ["does not exist"]),
    ],
)
def test_missing_or_empty_text_is_a_clear_error(tmp_path: Path, make, error, words):
    make(tmp_path)
    with pytest.raises(error) as raised:
        TextCorpus(path=str(tmp_path / "empty.txt"))
    assert all(word in str(raised.value) for word in [*words, "empty.txt"])


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="seq_len"):
        TextCorpus(seq_len=1)
    with pytest.raises(ConfigError, match="'sentencepiece'"):
        TextCorpus(vocab="sentencepiece")
    with pytest.raises(ConfigError, match="seq_len"):
        AddingProblem(seq_len=1)
    with pytest.raises(ConfigError, match="seq_len"):
        CopyMemory(seq_len=0)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_tokenizer_train_save_reload_round_trip(tmp_path: Path, kind: str):
    vocabulary = Vocabulary.train(kind, ENGLISH, vocab_size=300)
    assert len(vocabulary) <= 300
    assert vocabulary.tokenizer.token_to_id("[PAD]") == PAD_ID and vocabulary.tokenizer.token_to_id("[SEP]") == SEP_ID
    path = vocabulary.save(tmp_path / "tokenizer.json")
    loaded = Vocabulary.load(str(path))
    text = "The quick hobbit jumps over the worst dog."
    assert loaded.encode(text) == vocabulary.encode(text)
    assert len(set(loaded.encode(text))) > 3
    if kind == "bpe":
        assert loaded.decode(loaded.encode(text)) == text  # byte-level BPE is lossless
    # A DataModule reuses a saved vocabulary, and carries its own in checkpoints.
    corpus = TextCorpus(path=str(write_folder(tmp_path)), vocab_path=str(path), seq_len=8)
    assert corpus.vocabulary.to_json() == loaded.to_json()
    with pytest.raises(ConfigError, match=r"--data\.vocab_path"):
        corpus.load_state_dict({"vocabulary": Vocabulary.train(kind, ENGLISH[:1], vocab_size=30).to_json()})


def test_checkpointed_vocabulary_replaces_a_retrained_one(tmp_path: Path):
    corpus = TextCorpus(path=str(write_folder(tmp_path)), seq_len=8)
    before = corpus.tokens["train"].clone()
    state = corpus.state_dict()
    corpus.load_state_dict(state)  # the same vocabulary: nothing changes
    assert torch.equal(corpus.tokens["train"], before)
    chars = corpus.vocabulary.tokens
    shuffled = Vocabulary(chars=chars[:5] + chars[5:][::-1])  # same size, other ids
    corpus.load_state_dict({"vocabulary": shuffled.to_json()})
    assert not torch.equal(corpus.tokens["train"], before)
    assert corpus.decode(corpus.tokens["train"][:40].tolist()) == corpus.texts["train"][:40]


def test_char_vocabulary_round_trip_and_unknown_characters(tmp_path: Path):
    vocabulary = Vocabulary.train("char", ["abc"], vocab_size=0)
    assert vocabulary.decode(vocabulary.encode("cab")) == "cab"
    assert vocabulary.encode("z") == [1]  # [UNK]
    assert Vocabulary.load(str(vocabulary.save(tmp_path / "t.json"))).encode("cba") == vocabulary.encode("cba")


def test_topic_classification_keeps_labels_per_class():
    dm = TopicClassification(vocab="char", labels_per_class=3, seq_len=64)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert torch.bincount(train.y, minlength=dm.num_classes).tolist() == [3] * dm.num_classes
    assert dm.num_classes >= 10 and dm.shapes["num_classes"] == dm.num_classes
    assert (train.x[:, 0] == CLS_ID).all() and train.x.shape[1] == 64
    assert len(val) > dm.num_classes
    again = TopicClassification(vocab="char", labels_per_class=3, seq_len=64)
    assert torch.equal(again.datasets["train"].x, train.x)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_text_classification_file(tmp_path: Path, suffix: str):
    rows = [{"text": f"{word} review number {i}", "label": word} for i in range(10) for word in ("good", "bad")]
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("\n".join(json.dumps(row) for row in rows))
    dm = TextClassificationFile(str(path), seq_len=12, val_fraction=0.2, test_fraction=0.2)
    assert dm.class_names == ["bad", "good"]
    x, y = next(iter(dm.train_dataloader()))
    assert dm.decode(x[0].tolist()).split()[0] == dm.class_names[int(y[0])]
    with pytest.raises(ConfigError, match="'review'"):
        TextClassificationFile(str(path), text_key="review")


def test_adding_problem_and_copy_memory():
    adding = AddingProblem(seq_len=10, num_train=50, num_val=5, num_test=5)
    adding.setup()
    x, y = next(iter(adding.train_dataloader()))
    assert x.shape == (50, 10, 2) and y.shape == (50, 1)
    assert (x[..., 1].sum(1) == 2).all() and (x[:, :5, 1].sum(1) == 1).all()  # one marker in each half
    torch.testing.assert_close((x[..., 0] * x[..., 1]).sum(1, keepdim=True), y)
    bigger = AddingProblem(seq_len=10, num_train=80, num_val=5, num_test=5)
    bigger.setup()
    assert torch.equal(bigger.datasets["test"].x, adding.datasets["test"].x)  # test set does not move with num_train
    copy = CopyMemory(seq_len=6, copy_len=3, num_symbols=4, num_train=8, num_val=2, num_test=2)
    copy.setup()
    x, y = copy.datasets["train"].x, copy.datasets["train"].y
    assert x.shape == (8, 12) and torch.equal(y[:, -3:], x[:, :3]) and (x[:, 8] == 5).all()
    assert copy.shapes == {"vocab_size": 6, "num_classes": 5, "seq_len": 6, "answer_len": 3}


def test_dates_are_iso_and_held_out():
    dates = Dates(num_train=300, num_val=50, num_test=50, seed=3)
    dates.setup()
    src, tgt = dates.datasets["test"].x, dates.datasets["test"].y
    targets = [dates.decode(row.tolist()) for row in tgt]
    assert all(len(t) == 10 and t[4] == "-" and t[7] == "-" for t in targets)
    train = {dates.decode(row.tolist()) for row in dates.datasets["train"].y}
    assert not train & set(targets)
    sources = [dates.decode(row.tolist()) for row in src]
    assert len({s.split()[0] for s in sources}) > 10  # many surface forms
    other = Dates(num_train=300, num_val=50, num_test=50, seed=3)
    other.setup()
    assert torch.equal(other.datasets["test"].x, src)


@pytest.mark.parametrize("kind", ["char", "wordpiece"])
def test_special_token_ids_are_shapes(tmp_path: Path, kind: str):
    corpus = TextCorpus(path=str(write_folder(tmp_path)), vocab=kind, vocab_size=200, seq_len=8)
    shapes = corpus.shapes
    vocabulary = corpus.vocabulary
    token_id = vocabulary.tokens.index if kind == "char" else vocabulary.tokenizer.token_to_id
    ids = {token: token_id(token) for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    assert shapes["pad_id"] == ids["[PAD]"] and shapes["mask_id"] == ids["[MASK]"]
    assert sorted(ids.values()) == list(range(shapes["num_specials"]))  # the specials are exactly the ids below it
    assert shapes["vocab_size"] == len(corpus.vocabulary)


def test_text_classification_pads_with_its_pad_id():
    topics = TopicClassification(vocab="char", labels_per_class=2, seq_len=256)
    x = topics.datasets["train"].x
    assert topics.shapes["pad_id"] == topics.vocabulary.tokens.index("[PAD]")
    assert (x[:, -1] == topics.shapes["pad_id"]).any()  # short passages are padded with it


def test_dates_special_token_ids_are_shapes():
    dates = Dates(num_train=20, num_val=5, num_test=5)
    shapes = dates.shapes
    assert [dates.vocab[shapes[key]] for key in ("pad_id", "bos_id", "eos_id")] == ["[PAD]", "[BOS]", "[EOS]"]
    dates.setup()
    src, tgt = dates.datasets["train"].x, dates.datasets["train"].y
    assert (tgt[:, 0] == shapes["bos_id"]).all() and (tgt[:, -1] == shapes["eos_id"]).all()
    assert (src[:, -1] == shapes["pad_id"]).all()  # no surface form is max_len characters long
    assert dates.decode([shapes["bos_id"], *dates.encode("1999-03-03"), shapes["eos_id"], 5]) == "1999-03-03"


def test_vocabulary_is_trained_once_and_setup_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    train = Vocabulary.train.__func__

    def counted(cls, *args, **kwargs) -> Vocabulary:
        calls.append(args[0])
        return train(cls, *args, **kwargs)

    monkeypatch.setattr(Vocabulary, "train", classmethod(counted))
    corpus = TextCorpus(path=str(write_folder(tmp_path / "text")), seq_len=8)
    corpus.trainer = L.Trainer(default_root_dir=tmp_path / "run", logger=False, accelerator="cpu")
    for stage in ("fit", "validate", "test", "predict"):
        corpus.setup(stage)
    assert calls == ["char"]
    assert not list(tmp_path.rglob("tokenizer.json"))  # the CLI writes the run's files, not the DataModule


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x00\x01\x02binary\xff" * 100, ["is binary"]),
        ("first line\ncaf\xe9\n".encode("latin-1"), ["is not UTF-8", "line 2", "0xe9"]),
    ],
)
def test_a_binary_or_non_utf8_text_file_is_named(tmp_path: Path, content: bytes, words: list[str]):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as raised:
        TextCorpus(path=str(path))
    assert all(word in str(raised.value) for word in [*words, str(path.resolve())])


def write_reviews(path: Path, n: int = 20) -> list[str]:
    lines = [json.dumps({"text": f"{word} review number {i}", "label": word}) for i in range(n) for word in ("a", "b")]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('{"text": "unterminated, "label": "a"}', ["line 4 is not valid JSON"]),
        ('["text", "a"]', ["line 4 holds a JSON list"]),
        ('{"text": "no label here"}', ["line 4 has no 'label' value"]),
        ('{"text": "empty label", "label": ""}', ["line 4 has no 'label' value"]),
    ],
)
def test_a_malformed_jsonl_line_is_named(tmp_path: Path, line: str, words: list[str]):
    path = tmp_path / "reviews.jsonl"
    lines = write_reviews(path)
    lines[3] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises((ConfigError, CorruptFileError)) as raised:
        TextClassificationFile(str(path))
    assert all(word in str(raised.value) for word in [*words, str(path.resolve())])


def test_a_csv_row_without_its_label_is_named_not_a_class(tmp_path: Path):
    path = tmp_path / "reviews.csv"
    rows = [f"{word} review {i},{word}" for i in range(20) for word in ("good", "bad")]
    path.write_text("text,label\n" + "\n".join(rows[:5]) + "\njust some text\n" + "\n".join(rows[5:]) + "\n")
    with pytest.raises(ConfigError, match=r"line 7 has no 'label' value \(a short row\)"):
        TextClassificationFile(str(path))
    path.write_bytes(path.read_bytes().replace(b"just some text", b"caf\xe9,good"))
    with pytest.raises(CorruptFileError, match="is not UTF-8: byte 0xe9 on line 7"):
        TextClassificationFile(str(path))


def test_a_vocabulary_checkpoint_is_read_without_unpickling_objects(tmp_path: Path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    path = tmp_path / "vocab.ckpt"
    torch.save({"TextCorpus": {"vocabulary": Payload()}}, path)
    with pytest.raises(CorruptFileError, match="refused"):
        TextCorpus(vocab_path=str(path))
    assert not marker.exists()
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match=r"tokenizer\.json is not a vocabulary"):
        TextCorpus(vocab_path=str(tmp_path / "tokenizer.json"))
