"""Text DataModules: a corpus for (masked) language modelling, and text classification, offline by default.

The default corpus is the English documentation that ships inside every CPython: `pydoc_data.topics.topics`,
79 documents (one per help topic, about 0.46 MB). A user's text works the same way: `path` is a folder (each text
file one document) or one file (blank-line-separated paragraphs are the documents). The split into train, val and
test is by document, seeded by `seed` alone.

Vocabularies: characters, or a subword vocabulary (byte-level BPE, Sennrich et al. 2016; WordPiece, Wu et al. 2016)
trained on the training split with Hugging Face `tokenizers`. Every vocabulary starts with the same special tokens,
[PAD] [UNK] [CLS] [SEP] [MASK] = 0..4, and `shapes` gives their ids (`pad_id`, `mask_id`, `num_specials`) to the task
and net like every other shape. The vocabulary is trained once, in `__init__` (the CLI reads `shapes` before it builds
the net), and kept in `state_dict`, so every checkpoint carries it and `archlab test|predict --ckpt_path` decode with
exactly the vocabulary the model was trained with; the CLI also writes it beside the run with `vocabulary.save`.
`vocab_path` names a saved one (a tokenizer.json, or a .ckpt) to reuse, e.g. pre-training's for fine-tuning.
"""

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from archlab.data.base import DataModule, TensorBatchDataset, check_fraction, split_indices
from archlab.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from archlab.loading import load_checkpoint

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIALS))
VOCABS = ("char", "bpe", "wordpiece")
SPLITS = ("train", "val", "test")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


def pydoc_topics() -> dict[str, str]:
    """CPython's bundled documentation topics, {topic: text}."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def read_text(file: Path, *, what: str = "data.path") -> str:
    """A file's text as UTF-8; a binary or non-UTF-8 file is a CorruptFileError naming it and the first bad byte."""
    data = file.read_bytes()
    if b"\x00" in data[:65536]:
        raise CorruptFileError(
            f"{what}: {file.resolve()} is binary (it holds NUL bytes), not text; give UTF-8 text files "
            f"({', '.join(TEXT_SUFFIXES)}) or remove it from the folder."
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CorruptFileError(
            f"{what}: {file.resolve()} is not UTF-8: byte 0x{data[error.start]:02x} on line {line} (offset "
            f"{error.start}) cannot be decoded; convert the file, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`."
        ) from None


def read_documents(path: str | None) -> dict[str, str]:
    """{name: text}: pydoc's topics (path None), each text file of a folder, or the paragraphs of one file."""
    if path is None:
        return pydoc_topics()
    source = Path(path)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        docs = {str(p.relative_to(source)): read_text(p) for p in files}
    elif source.is_file():
        text = read_text(source)
        paragraphs = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n")]
        docs = {f"{source.name}:{i}": p for i, p in enumerate(paragraphs) if p.strip()}
    else:
        raise DatasetNotFoundError(
            f"data.path {source.resolve()} does not exist; give a text file, a folder of text files "
            f"({', '.join(TEXT_SUFFIXES)}), or leave it unset for Python's bundled documentation."
        )
    docs = {name: text for name, text in docs.items() if text.strip()}
    if not docs:
        raise ConfigError(
            f"data.path {source.resolve()} holds no text (empty file, or a folder without non-empty "
            f"{', '.join(TEXT_SUFFIXES)} files)."
        )
    return docs


class Vocabulary:
    """Text <-> token ids: characters, or a Hugging Face `tokenizers` BPE / WordPiece tokenizer."""

    def __init__(self, *, chars: Sequence[str] | None = None, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.tokens = list(chars) if chars is not None else None
        self.index = {token: i for i, token in enumerate(self.tokens)} if self.tokens is not None else None

    @classmethod
    def train(cls, kind: str, texts: list[str], vocab_size: int) -> "Vocabulary":
        if kind == "char":
            return cls(chars=SPECIALS + sorted(set("".join(texts))))
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        if kind == "bpe":
            tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                special_tokens=SPECIALS,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        else:
            tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
            tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
            tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tokenizer.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer=tokenizer)

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        data = json.loads(text)
        if "archlab_chars" in data:
            return cls(chars=data["archlab_chars"])
        from tokenizers import Tokenizer

        return cls(tokenizer=Tokenizer.from_str(text))

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        """From a tokenizer.json written beside a run, or from a checkpoint whose DataModule saved one."""
        file = Path(path)
        if not file.is_file():
            raise DatasetNotFoundError(
                f"data.vocab_path {file.resolve()} does not exist; pass the tokenizer.json of an earlier run "
                "(runs/<experiment>/<time>/tokenizer.json) or its checkpoint."
            )
        if file.suffix == ".ckpt":
            checkpoint = load_checkpoint(file, what="data.vocab_path")
            for value in checkpoint.values():
                if isinstance(value, dict) and isinstance(value.get("vocabulary"), str):
                    return cls.from_json(value["vocabulary"])
            raise ConfigError(
                f"data.vocab_path: checkpoint {file} holds no text vocabulary (it is not from a text run)."
            )
        try:
            return cls.from_json(read_text(file, what="data.vocab_path"))
        except CorruptFileError:
            raise
        except Exception as error:  # not JSON, or JSON that `tokenizers` cannot read
            raise CorruptFileError(
                f"data.vocab_path: {file.resolve()} is not a vocabulary archlab or `tokenizers` can read "
                f"({type(error).__name__}: {str(error).strip()[:200]}); pass the tokenizer.json or checkpoint "
                "of an earlier run."
            ) from None

    def to_json(self) -> str:
        if self.tokens is not None:
            return json.dumps({"archlab_chars": self.tokens}, ensure_ascii=False)
        return self.tokenizer.to_str()

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    def __len__(self) -> int:
        return len(self.tokens) if self.tokens is not None else self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if self.index is not None:
            return [self.index.get(c, UNK_ID) for c in text]
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        ids = [i for i in ids if i >= len(SPECIALS) or i == UNK_ID]
        if self.tokens is not None:
            return "".join(self.tokens[i] for i in ids)
        return self.tokenizer.decode(ids)


class TextDataModule(DataModule):
    """The vocabulary's life cycle: trained on the training split (or loaded) once, in `__init__`; kept in checkpoints
    and restored from one in test and predict."""

    name = "text"

    def __init__(
        self,
        *,
        vocab: Literal["char", "bpe", "wordpiece"] = "char",
        vocab_size: int = 4000,
        vocab_path: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        if vocab not in VOCABS:
            raise ConfigError(f"{self.name}: data.vocab must be one of {list(VOCABS)}; got {vocab!r}.")
        if vocab != "char" and vocab_size <= len(SPECIALS) + 1:
            raise ConfigError(f"{self.name}: data.vocab_size must be > {len(SPECIALS) + 1}; got {vocab_size}.")
        if seq_len < 2:
            raise ConfigError(f"{self.name}: data.seq_len (the sequence length T) must be >= 2; got {seq_len}.")
        check_fraction(self.name, "val_fraction", val_fraction, positive=True)
        check_fraction(self.name, "test_fraction", test_fraction, positive=True)
        self.vocab_kind = vocab
        self.target_vocab_size = vocab_size
        self.vocab_path = vocab_path
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.vocabulary: Vocabulary | None = None

    def make_vocabulary(self, train_texts: list[str]) -> Vocabulary:
        if self.vocab_path:
            return Vocabulary.load(self.vocab_path)
        return Vocabulary.train(self.vocab_kind, train_texts, self.target_vocab_size)

    def encode_splits(self) -> None:
        """Token ids of every split with the current vocabulary -> `self.datasets`."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary.to_json()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = Vocabulary.from_json(state_dict["vocabulary"])
        if saved.to_json() == self.vocabulary.to_json():
            return
        if len(saved) != len(self.vocabulary):
            raise ConfigError(
                f"{self.name}: the checkpoint's vocabulary has {len(saved)} tokens but this data's has "
                f"{len(self.vocabulary)}; pass the run's vocabulary with --data.vocab_path RUN/tokenizer.json."
            )
        self.vocabulary = saved
        self.encode_splits()

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocabulary.decode(ids)


class Windows(Dataset):
    """(x, y) = tokens[s : s + T], tokens[s + 1 : s + T + 1] at s = i * T (+ a random shift in [0, T) if `jitter`);
    with `wrap`, x = [CLS] + tokens[s : s + T - 2] + [SEP] and y = x (for masked-LM)."""

    def __init__(self, tokens: Tensor, seq_len: int, *, jitter: bool, wrap: bool) -> None:
        self.tokens = tokens
        self.span = seq_len - 2 if wrap else seq_len
        self.jitter = jitter
        self.wrap = wrap
        self.count = max((len(tokens) - 1) // self.span - (1 if jitter else 0), 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = i * self.span + (int(torch.randint(self.span, ())) if self.jitter else 0)
        if self.wrap:
            x = torch.cat([torch.tensor([CLS_ID]), self.tokens[start : start + self.span], torch.tensor([SEP_ID])])
            return x, x
        return self.tokens[start : start + self.span], self.tokens[start + 1 : start + self.span + 1]


class Streams(Dataset):
    """The token stream as B parallel streams; item i is the whole batch of the i-th T-step window of every stream,
    so a recurrent net's hidden state carries from one batch to the next (truncated BPTT)."""

    def __init__(self, tokens: Tensor, seq_len: int, batch_size: int, *, rows: slice = slice(None)) -> None:
        """`rows`: the streams this process serves (under DDP, every world_size-th from its rank)."""
        n = len(tokens) // batch_size
        self.streams = tokens[: n * batch_size].view(batch_size, n)[rows]  # (B', N)
        self.seq_len = seq_len
        self.count = max((n - 1) // seq_len, 0)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = i * self.seq_len
        return self.streams[:, start : start + self.seq_len], self.streams[:, start + 1 : start + self.seq_len + 1]


class TextCorpus(TextDataModule):
    """Documents split by document -> one token stream per split -> windows of `seq_len` tokens: (x, y) with y the
    next tokens. `stream` serves consecutive windows of `batch_size` parallel streams (carried hidden state)."""

    name = "TextCorpus"

    def __init__(
        self,
        *,
        path: str | None = None,
        stream: bool = False,
        wrap: bool = False,
        prompt: str = "The ",
        num_samples: int = 4,
        **kwargs: Any,
    ) -> None:
        """`path`: a text file or folder; None: Python's documentation topics. `wrap`: windows are
        [CLS] + seq_len - 2 tokens + [SEP] (for BERT pre-training). `prompt`: what `predict` continues,
        `num_samples` times."""
        super().__init__(**kwargs)
        if stream and wrap:
            raise ConfigError("TextCorpus: data.stream and data.wrap exclude each other (stream is for recurrent LMs).")
        if not prompt or num_samples < 1:
            raise ConfigError(
                f"TextCorpus: data.prompt must be non-empty and data.num_samples >= 1; got {prompt!r}, {num_samples}."
            )
        self.path = path
        self.stream = stream
        self.wrap = wrap
        self.prompt = prompt
        self.num_samples = num_samples
        docs = read_documents(path)
        names = sorted(docs)
        splits = split_indices(
            len(names),
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            name=self.name,
            unit="documents (files of a folder, or blank-line-separated paragraphs of a file)",
        )
        self.split_names = {
            split: [names[i] for i in index.tolist()] for split, index in zip(SPLITS, splits, strict=True)
        }
        self.texts = {split: "\n\n".join(docs[name] for name in names) for split, names in self.split_names.items()}
        self.vocabulary = self.make_vocabulary([docs[name] for name in self.split_names["train"]])
        self.encode_splits()

    def encode_splits(self) -> None:
        self.tokens = {split: torch.tensor(self.vocabulary.encode(text)) for split, text in self.texts.items()}
        for split, tokens in self.tokens.items():
            if len(tokens) < self.seq_len + 1 or (self.stream and len(tokens) < self.batch_size * (self.seq_len + 1)):
                raise ConfigError(
                    f"TextCorpus: the {split} split has {len(tokens)} tokens, too few for one window of data.seq_len="
                    f"{self.seq_len}{f' in each of data.batch_size={self.batch_size} streams' if self.stream else ''};"
                    " give more text or lower them."
                )
        self.datasets = {
            split: Streams(tokens, self.seq_len, self.batch_size)
            if self.stream
            else Windows(tokens, self.seq_len, jitter=split == "train", wrap=self.wrap)
            for split, tokens in self.tokens.items()
        }

    @property
    def shapes(self) -> dict[str, Any]:
        return {
            "vocab_size": len(self.vocabulary),
            "max_len": self.seq_len,
            "pad_id": PAD_ID,
            "mask_id": MASK_ID,
            "num_specials": len(SPECIALS),
            # Bits per character from a per-token loss: the characters a token covers, on the training split.
            "chars_per_symbol": len(self.texts["train"]) / len(self.tokens["train"]),
        }

    def loader(self, split: str, *, shuffle: bool = False) -> DataLoader:
        if self.stream:  # each item is already a batch of the parallel streams, served in order
            dataset = self.dataset(split)
            trainer = self.trainer
            if trainer is not None and trainer.world_size > 1:
                # Under DDP each process serves its own streams (rows) of every window, not every other window, so
                # the hidden state it carries continues its own text; a one-replica DistributedSampler keeps
                # Lightning from putting a window-sharding one in its place.
                rows = slice(trainer.global_rank, None, trainer.world_size)
                dataset = Streams(self.tokens[split], self.seq_len, self.batch_size, rows=rows)
                sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
                return DataLoader(dataset, batch_size=None, sampler=sampler)
            return DataLoader(dataset, batch_size=None)
        return super().loader(split, shuffle=shuffle)

    def predict_dataloader(self) -> DataLoader:
        prompt = torch.tensor(self.vocabulary.encode(self.prompt)).repeat(self.num_samples, 1)  # (num_samples, P)
        return DataLoader([(prompt,)], batch_size=None)


class TextClassification(TextDataModule):
    """(text, label) pairs -> stratified train/val/test split, `labels_per_class` kept for training -> (B, seq_len)
    ids [CLS] text [SEP] [PAD]..., truncated to `seq_len`."""

    name = "TextClassification"

    def __init__(self, *, labels_per_class: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if labels_per_class is not None and labels_per_class < 1:
            raise ConfigError(f"{self.name}: data.labels_per_class must be >= 1 or null (all); got {labels_per_class}.")
        self.labels_per_class = labels_per_class

    def prepare(self, texts: list[str], labels: list[str]) -> None:
        """Called by a subclass's __init__ once it has read its (text, label) pairs."""
        self.class_names = sorted(set(labels))
        if len(self.class_names) < 2:
            raise ConfigError(f"{self.name}: needs at least 2 classes; found {self.class_names}.")
        index = {name: i for i, name in enumerate(self.class_names)}
        self.texts = texts
        self.labels = torch.tensor([index[label] for label in labels])
        train, val, test = split_indices(
            len(self.labels),
            labels=self.labels,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
            name=self.name,
            unit="texts",
        )
        if self.labels_per_class is not None:
            shuffled = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))]
            keep = [
                i
                for c in range(len(self.class_names))
                for i in shuffled[self.labels[shuffled] == c][: self.labels_per_class]
            ]
            train = torch.tensor(sorted(int(i) for i in keep))
        self.split_index = {"train": train, "val": val, "test": test}
        self.vocabulary = self.make_vocabulary([texts[i] for i in train.tolist()])
        self.encode_splits()

    def encode_splits(self) -> None:
        ids = torch.full((len(self.texts), self.seq_len), PAD_ID, dtype=torch.long)  # (N, T)
        for i, text in enumerate(self.texts):
            tokens = [CLS_ID, *self.vocabulary.encode(text)[: self.seq_len - 2], SEP_ID]
            ids[i, : len(tokens)] = torch.tensor(tokens)
        self.datasets = {
            split: TensorBatchDataset(ids[index], self.labels[index]) for split, index in self.split_index.items()
        }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shapes(self) -> dict[str, Any]:
        return {
            "vocab_size": len(self.vocabulary),
            "max_len": self.seq_len,
            "pad_id": PAD_ID,
            "num_classes": self.num_classes,
        }


class TopicClassification(TextClassification):
    """Passages of `passage_words` words, labelled with the document (pydoc topic, or file) they come from; documents
    with fewer than `min_passages` passages are left out."""

    name = "TopicClassification"

    def __init__(
        self, *, path: str | None = None, passage_words: int = 64, min_passages: int = 20, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if passage_words < 1 or min_passages < 3:
            raise ConfigError(
                f"TopicClassification: data.passage_words must be >= 1 and data.min_passages >= 3; "
                f"got {passage_words}, {min_passages}."
            )
        self.path = path
        texts, labels = [], []
        for topic, text in read_documents(path).items():
            words = text.split()
            passages = [" ".join(words[i : i + passage_words]) for i in range(0, len(words), passage_words)]
            if len(passages) >= min_passages:
                texts += passages
                labels += [topic] * len(passages)
        self.prepare(texts, labels)


class TextClassificationFile(TextClassification):
    """A user's CSV (with a header) or JSONL file of (text, label) records."""

    name = "TextClassificationFile"

    def __init__(self, path: str, *, text_key: str = "text", label_key: str = "label", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        file = Path(path)
        if not file.is_file():
            raise DatasetNotFoundError(
                f"TextClassificationFile: data.path {file.resolve()} does not exist; give a "
                "CSV with a header row or a JSONL file of {text, label} records."
            )
        suffix = file.suffix.lower()
        if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
            raise ConfigError(f"TextClassificationFile: data.path {file} must end in .csv, .tsv or .jsonl.")
        text = read_text(file)
        records = read_jsonl(file, text) if suffix in (".jsonl", ".json") else read_csv(file, text, suffix == ".tsv")
        if not records:
            raise ConfigError(f"TextClassificationFile: {file.resolve()} holds no records.")
        for key in (text_key, label_key):
            if key not in records[0][1]:
                raise ConfigError(
                    f"TextClassificationFile: {file.resolve()} has no {key!r} field (fields: "
                    f"{sorted(str(k) for k in records[0][1])}); set data.text_key / data.label_key."
                )
        for line, record in records:
            for key in (text_key, label_key):
                if record.get(key) is None or str(record[key]).strip() == "":
                    raise ConfigError(
                        f"TextClassificationFile: {file.resolve()} line {line} has no {key!r} value "
                        f"({'a short row' if suffix in ('.csv', '.tsv') else 'the field is missing or empty'}); "
                        "every record needs a text and a label. Fix or remove the line."
                    )
        self.prepare([str(r[text_key]) for _, r in records], [str(r[label_key]) for _, r in records])


def read_jsonl(file: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, record) for each non-blank line, each a JSON object."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorruptFileError(
                f"TextClassificationFile: {file.resolve()} line {number} is not valid JSON ({error.msg} at column "
                f"{error.colno}); a JSONL file holds one JSON object per line."
            ) from None
        if not isinstance(record, dict):
            raise CorruptFileError(
                f"TextClassificationFile: {file.resolve()} line {number} holds a JSON {type(record).__name__}, "
                'not an object; each line must be an object such as {"text": "...", "label": "..."}.'
            )
        records.append((number, record))
    return records


def read_csv(file: Path, text: str, tsv: bool) -> list[tuple[int, dict]]:
    """(line number, record) for each row after the header; a short row leaves its missing fields None."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",")
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise CorruptFileError(
            f"TextClassificationFile: {file.resolve()} line {reader.line_num} is not valid CSV ({error})."
        ) from None
