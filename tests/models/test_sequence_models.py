"""The sequence family: shapes, causality, padding, carried state, BERT's size and its equality with Hugging Face's."""

import pytest
import torch

from archlab.errors import ConfigError
from archlab.models import BERT, GPT, RecurrentNet, Transformer, bert_base
from archlab.models.bert import encoder_params, hf_to_archlab


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_transformer(**kwargs) -> Transformer:
    return Transformer(vocab_size=13, max_len=16, pad_id=0, dim=16, num_heads=2, num_layers=2, **kwargs).eval()


def test_shapes():
    ids = torch.randint(1, 13, (3, 9))
    assert GPT(vocab_size=13, max_len=16, dim=16, num_heads=2, num_layers=1)(ids).shape == (3, 9, 13)
    assert tiny_transformer()(ids, ids[:, :5]).shape == (3, 5, 13)
    assert BERT(vocab_size=13, max_len=16, dim=16, num_heads=2, num_layers=1)(ids).shape == (3, 9, 13)
    assert BERT(vocab_size=13, max_len=16, dim=16, num_heads=2, num_layers=1, num_classes=4)(ids).shape == (3, 4)
    assert RecurrentNet(cell="gru", vocab_size=13, dim=8, hidden_dim=8)(ids).shape == (3, 9, 13)
    x = torch.randn(3, 9, 2)
    rnn = RecurrentNet(cell="rnn", in_features=2, num_classes=1, hidden_dim=8, num_layers=2, output="last")
    assert rnn(x).shape == (3, 1)
    bi = RecurrentNet(vocab_size=13, num_classes=5, hidden_dim=8, bidirectional=True, output="last", pad_id=0)
    assert bi(ids).shape == (3, 5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GPT(vocab_size=13, max_len=16, dim=16, num_heads=2, num_layers=2, dropout=0.0).eval(),
        lambda: RecurrentNet(cell="lstm", vocab_size=13, dim=8, hidden_dim=8, num_layers=2).eval(),
        lambda: RecurrentNet(cell="rnn", vocab_size=13, dim=8, hidden_dim=8).eval(),
    ],
    ids=["gpt", "lstm", "rnn"],
)
def test_language_models_are_causal(make):
    torch.manual_seed(0)
    net = make()
    ids = torch.randint(1, 13, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (ids[:, 7] % 12) + 1  # a different token at position 7
    out, out_changed = net(ids), net(changed)
    assert torch.equal(out[:, :7], out_changed[:, :7])  # positions 0..6 never see position 7
    assert not torch.allclose(out[:, 7:], out_changed[:, 7:])  # the test can fail: later positions do see it


def test_transformer_decoder_is_causal_and_ignores_source_padding():
    torch.manual_seed(0)
    net = tiny_transformer(dropout=0.0)
    src = torch.randint(1, 13, (2, 6))
    tgt = torch.randint(1, 13, (2, 8))
    changed = tgt.clone()
    changed[:, 5] = (tgt[:, 5] % 12) + 1
    out = net(src, tgt)
    torch.testing.assert_close(out[:, :5], net(src, changed)[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, 5:], net(src, changed)[:, 5:])
    padded = torch.cat([src, torch.zeros(2, 4, dtype=torch.long)], dim=1)  # pad_id 0 on the right
    torch.testing.assert_close(net(padded, tgt), out, rtol=1e-5, atol=1e-5)


def test_recurrent_carried_state_equals_one_pass_and_last_skips_padding():
    torch.manual_seed(0)
    net = RecurrentNet(cell="lstm", vocab_size=13, dim=8, hidden_dim=8, num_layers=2).eval()
    ids = torch.randint(1, 13, (2, 10))
    whole, _ = net.recur(ids)
    first, state = net.recur(ids[:, :4])
    second, _ = net.recur(ids[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    clf = RecurrentNet(cell="gru", vocab_size=13, num_classes=3, hidden_dim=8, output="last", pad_id=0).eval()
    short = torch.randint(1, 13, (1, 5))
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(clf(padded), clf(short))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cell": "transformer", "vocab_size": 5}, ["cell", "transformer", "lstm"]),
        ({"vocab_size": 5, "in_features": 2}, ["vocab_size", "in_features"]),
        ({"in_features": 2, "num_classes": 1, "output": "first"}, ["output", "first"]),
    ],
)
def test_recurrent_bad_arguments_are_named(kwargs, words):
    with pytest.raises(ConfigError) as error:
        RecurrentNet(**kwargs)
    assert all(word in str(error.value) for word in words)


def test_attention_nets_reject_bad_shapes():
    with pytest.raises(ConfigError, match="divisible"):
        GPT(vocab_size=10, dim=10, num_heads=3)
    with pytest.raises(ConfigError, match="vocab_size"):
        BERT()
    with pytest.raises(ValueError, match="max_len=4"):
        GPT(vocab_size=10, max_len=4, dim=8, num_heads=2, num_layers=1)(torch.zeros(1, 5, dtype=torch.long))


def test_bert_base_has_the_papers_110m_parameters():
    with torch.device("meta"):
        model = bert_base(num_classes=2)
    # Hugging Face's BertModel (bert-base-uncased) has 109,482,240: embeddings, 12 blocks, pooler.
    assert encoder_params(model) == 109_482_240
    assert round(encoder_params(model) / 1e6) == 109  # "110M" in the paper, rounded up


def test_bert_equals_hugging_face_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=40, type_vocab_size=2, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.BertModel(config).eval()
    ours = BERT(vocab_size=99, max_len=40, dim=32, num_heads=4, num_layers=2, hidden_dim=37, num_classes=3).eval()
    missing, unexpected = ours.load_state_dict(hf_to_archlab(reference.state_dict()), strict=False)
    assert set(missing) == {"classifier.1.weight", "classifier.1.bias"} and not unexpected
    ids = torch.randint(1, 99, (3, 11))
    ids[1, 6:] = 0  # padding
    segments = torch.randint(0, 2, (3, 11))
    with torch.no_grad():
        expected = reference(input_ids=ids, token_type_ids=segments, attention_mask=(ids != 0).long())
        hidden = ours.encode(ids, segments)
    real = ids != 0
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.pool(hidden), expected.pooler_output, rtol=1e-5, atol=1e-5)
