"""Synthetic sequence tasks generated from a seed: the adding problem, copy memory, and dates to ISO dates.

Hochreiter, Schmidhuber. "Long Short-Term Memory", Neural Computation 1997, sec. 5.4 (the adding problem).
Arjovsky, Shah, Bengio. "Unitary Evolution Recurrent Neural Networks", ICML 2016, sec. 4.1-4.2 (copy memory and the
adding problem in the form used here: one marker in each half of the sequence).

`seq_len` is the sequence length T in every sequence DataModule (for copy memory, the delay). Each split has its own
fixed samples: test is drawn first, then val, then train, from one generator seeded with `seed`, so the held-out
data does not change with `num_train`.
"""

import calendar
import datetime
import string

import torch
from torch import Tensor

from archlab.data.base import DataModule, TensorBatchDataset
from archlab.errors import ConfigError

SPLITS = ("test", "val", "train")


class SyntheticSequences(DataModule):
    """Fixed seeded train/val/test samples in memory, served a whole batch per slice."""

    name = "synthetic"

    def __init__(
        self, *, num_train: int = 20000, num_val: int = 1000, num_test: int = 1000, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ConfigError(f"{self.name}: data.{key} must be >= 1; got {value}.")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def make_datasets(self) -> dict[str, TensorBatchDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        return {split: TensorBatchDataset(*self.generate(self.sizes[split], generator)) for split in SPLITS}


def check_seq_len(name: str, seq_len: int) -> None:
    if seq_len < 2:
        raise ConfigError(f"{name}: data.seq_len (the sequence length T) must be >= 2; got {seq_len}.")


class AddingProblem(SyntheticSequences):
    """x: (T, 2) of [value ~ U(0, 1), marker]; two markers, one in each half; y: the sum of the two marked values.

    Predicting the mean, 1, scores MSE = Var(U + U') = 1/6 = 0.167; solving it needs memory across T steps.
    """

    name = "AddingProblem"

    def __init__(self, *, seq_len: int = 100, **kwargs) -> None:
        check_seq_len(self.name, seq_len)
        self.seq_len = seq_len
        super().__init__(**kwargs)

    @property
    def shapes(self) -> dict[str, int]:
        return {"in_features": 2, "num_classes": 1, "seq_len": self.seq_len}

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        t, half = self.seq_len, self.seq_len // 2
        values = torch.rand(n, t, generator=generator)
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, t, (n,), generator=generator)
        markers = torch.zeros(n, t)
        markers[torch.arange(n), first] = 1.0
        markers[torch.arange(n), second] = 1.0
        x = torch.stack([values, markers], dim=-1)  # (N, T, 2)
        y = (values * markers).sum(1, keepdim=True)  # (N, 1)
        return x, y


class CopyMemory(SyntheticSequences):
    """x: `copy_len` random symbols, T - 1 blanks, a delimiter, `copy_len` blanks; y: blanks, then the symbols.

    Tokens: 0 blank, 1..num_symbols symbols, num_symbols + 1 the delimiter. Outputs: blank or a symbol.
    Always predicting blank, then uniform symbols, scores accuracy 1 / num_symbols on the answer.
    """

    name = "CopyMemory"

    def __init__(self, *, seq_len: int = 100, copy_len: int = 10, num_symbols: int = 8, **kwargs) -> None:
        check_seq_len(self.name, seq_len)
        if copy_len < 1 or num_symbols < 2:
            raise ConfigError(
                f"{self.name}: data.copy_len must be >= 1 and data.num_symbols >= 2; got {copy_len}, {num_symbols}."
            )
        self.seq_len = seq_len
        self.copy_len = copy_len
        self.num_symbols = num_symbols
        super().__init__(**kwargs)

    @property
    def shapes(self) -> dict[str, int]:
        return {
            "vocab_size": self.num_symbols + 2,
            "num_classes": self.num_symbols + 1,
            "seq_len": self.seq_len,
            "answer_len": self.copy_len,
        }

    def generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        k, t = self.copy_len, self.seq_len
        symbols = torch.randint(1, self.num_symbols + 1, (n, k), generator=generator)
        x = torch.zeros(n, t + 2 * k, dtype=torch.long)  # (N, T + 2K)
        x[:, :k] = symbols
        x[:, t + k - 1] = self.num_symbols + 1
        y = torch.zeros_like(x)
        y[:, -k:] = symbols
        return x, y


# Dates: free-form surface forms -> ISO 8601. Source and target share one character vocabulary.
DATE_SPECIALS = ["[PAD]", "[BOS]", "[EOS]"]
PAD_ID, BOS_ID, EOS_ID = range(len(DATE_SPECIALS))
TARGET_LEN = 12  # [BOS] YYYY-MM-DD [EOS]
DATE_CHARS = sorted(set(string.ascii_letters + string.digits + " ,./-'"))
ORDINALS = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh",
    "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
    "twentieth", "twenty-first", "twenty-second", "twenty-third", "twenty-fourth", "twenty-fifth", "twenty-sixth",
    "twenty-seventh", "twenty-eighth", "twenty-ninth", "thirtieth", "thirty-first",
]  # fmt: skip
FIRST_DAY = datetime.date(1900, 1, 1)
NUM_DAYS = (datetime.date(2099, 12, 31) - FIRST_DAY).days + 1


def suffix(day: int) -> str:
    return "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def date_forms(d: datetime.date) -> list[str]:
    """The surface forms a date can take; the generator picks one per sample."""
    month, mon, weekday = calendar.month_name[d.month], calendar.month_abbr[d.month], calendar.day_name[d.weekday()]
    day = f"{d.day}{suffix(d.day)}"
    return [
        f"{day} of {month} {d.year}",
        f"{month} {d.day}, {d.year}",
        f"{d.day} {mon} {d.year}",
        f"{d.month}/{d.day}/{d.year}",
        f"{d.day}.{d.month}.{d.year}",
        f"{weekday}, {month} {d.day}, {d.year}",
        f"{d.year}/{d.month:02d}/{d.day:02d}",
        f"the {ORDINALS[d.day - 1]} of {month.lower()} {d.year}",
        f"{month.upper()} {day.upper()}, {d.year}",
        f"{d.day:02d}-{mon}-{d.year}",
        f"{mon}. {day} {d.year}",
        f"{weekday[:3].lower()} {d.day} {mon.lower()} {d.year}",
    ]


class Dates(SyntheticSequences):
    """Free-form dates ("3rd of March 1999", "3.3.1999", "Wed 3 mar 1999") -> ISO dates ("1999-03-03").

    Dates are drawn without replacement from 1900-2099, so no val or test date occurs in training in any form.
    Batches are (src, tgt): (B, S) source characters and (B, 12) [BOS] + ISO date + [EOS], padded with [PAD].
    """

    name = "Dates"
    max_source_len = 40
    vocab = DATE_SPECIALS + DATE_CHARS

    def __init__(self, *, num_train: int = 20000, num_val: int = 1000, num_test: int = 1000, **kwargs) -> None:
        if num_train + num_val + num_test > NUM_DAYS:
            raise ConfigError(f"Dates: num_train + num_val + num_test must be <= {NUM_DAYS} distinct dates.")
        super().__init__(num_train=num_train, num_val=num_val, num_test=num_test, **kwargs)
        self.index = {token: i for i, token in enumerate(self.vocab)}

    @property
    def shapes(self) -> dict[str, int]:
        return {
            "vocab_size": len(self.vocab),
            "max_len": self.max_source_len,
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
        }

    def make_datasets(self) -> dict[str, TensorBatchDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        days = torch.randperm(NUM_DAYS, generator=generator)
        start, datasets = 0, {}
        for split in SPLITS:
            chosen = days[start : start + self.sizes[split]]
            start += self.sizes[split]
            datasets[split] = TensorBatchDataset(*self.generate_days(chosen, generator))
        return datasets

    def generate_days(self, days: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        dates = [FIRST_DAY + datetime.timedelta(days=int(day)) for day in days]
        picks = torch.randint(0, len(date_forms(FIRST_DAY)), (len(dates),), generator=generator).tolist()
        sources = [date_forms(d)[pick] for d, pick in zip(dates, picks, strict=True)]
        src = torch.full((len(dates), self.max_source_len), PAD_ID, dtype=torch.long)  # (N, S)
        tgt = torch.empty(len(dates), TARGET_LEN, dtype=torch.long)  # (N, 12)
        for i, (text, d) in enumerate(zip(sources, dates, strict=True)):
            src[i, : len(text)] = torch.tensor(self.encode(text))
            tgt[i] = torch.tensor([BOS_ID, *self.encode(d.isoformat()), EOS_ID])
        return src, tgt

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, stopping at [EOS] and skipping [PAD] and [BOS]."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(self.vocab[i])
        return "".join(out)
