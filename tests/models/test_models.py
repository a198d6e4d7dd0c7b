import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from archlab.errors import ConfigError
from archlab.models import CNN, MODELS, AuxLogits, GoogLeNet, ResNet, TimmNet, googlenet_small, plain20, resnet20
from archlab.models.resnet import BasicBlock

# Classifiers by registry name -> (tiny kwargs, input shape); test_registry.py holds every family's tiny entries.
CLASSIFIERS: dict[str, tuple[dict, tuple[int, ...]]] = {
    "cnn": ({"in_channels": 1, "channels": (4, 8, 8), "hidden_dim": 8, "dropout": 0.1}, (2, 1, 8, 8)),
    "resnet": ({"depth": 8, "width": 4, "num_classes": 3}, (2, 3, 8, 8)),
    "resnet20": ({"width": 4}, (2, 3, 8, 8)),
    "resnet32": ({"width": 2}, (2, 3, 8, 8)),
    "resnet44": ({"width": 2}, (2, 3, 8, 8)),
    "resnet56": ({"width": 2, "in_channels": 1}, (2, 1, 8, 8)),
    "resnet110": ({"width": 2}, (2, 3, 8, 8)),
    "plain20": ({"width": 4}, (2, 3, 8, 8)),
    "plain56": ({"width": 2}, (2, 3, 8, 8)),
    "resnet18": ({"width": 4, "num_classes": 7}, (2, 3, 32, 32)),
    "resnet34": ({"width": 4}, (2, 3, 32, 32)),
    "resnet50": ({"width": 4}, (2, 3, 32, 32)),
    "resnet101": ({"width": 2}, (2, 3, 32, 32)),
    "resnet152": ({"width": 2}, (2, 3, 32, 32)),
    "googlenet": ({"width": 0.125, "aux_logits": True}, (2, 3, 32, 32)),
    "googlenet_small": ({"width": 0.125, "in_channels": 1, "aux_logits": True}, (2, 1, 8, 8)),
    "timm": ({"name": "test_resnet", "num_classes": 5}, (2, 3, 32, 32)),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # these tensors are tiny: a second intra-op thread only spins, and on a shared 2-core CPU that is 5-10x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_tiny_classifier_forward_backward(name):
    torch.manual_seed(0)
    kwargs, shape = CLASSIFIERS[name]
    model = MODELS[name](**kwargs)
    num_classes = kwargs.get("num_classes", 10)
    assert model.num_classes == num_classes
    x = torch.randn(shape)

    out = model.train()(x)
    logits, aux = (out.logits, out.aux) if isinstance(out, AuxLogits) else (out, ())
    assert logits.shape == (shape[0], num_classes)
    assert all(a.shape == logits.shape for a in aux)
    assert torch.isfinite(logits).all()
    target = torch.randint(num_classes, (shape[0],))
    loss = F.cross_entropy(logits, target) + sum(F.cross_entropy(a, target) for a in aux)
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {param_name} has a non-finite gradient"

    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (shape[0], num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("build", [CNN, googlenet_small], ids=["cnn", "googlenet_small"])
def test_small_image_sizes(build, size):
    model = build(in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


# paper Table 6. Option A shortcuts have no parameters, so the plain network has the same count.
@pytest.mark.parametrize(
    ("depth", "count", "paper"), [(20, 269_722, "0.27M"), (56, 853_018, "0.85M"), (110, 1_727_962, "1.7M")]
)
def test_cifar_resnet_parameter_counts(depth, count, paper):
    assert n_params(ResNet(depth=depth)) == count
    assert f"{count / 1e6:.2g}M" == paper
    assert n_params(ResNet(depth=depth, shortcut="none")) == count
    # option B adds two 1x1 projections with BN: 16 -> 32 and 32 -> 64
    assert n_params(ResNet(depth=depth, shortcut="B")) == count + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize(("depth", "reference"), [(18, torchvision.models.resnet18), (50, torchvision.models.resnet50)])
def test_imagenet_resnet_equals_torchvision(depth, reference):
    torch.manual_seed(0)
    theirs = reference().eval()
    ours = ResNet(depth=depth, style="imagenet", num_classes=1000).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_googlenet_equals_torchvision_with_3x3_branch():
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(aux_logits=False, init_weights=True).eval()
    assert not theirs.transform_input
    ours = GoogLeNet(num_classes=1000, branch5_kernel=3).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def test_googlenet_parameter_counts():
    torchvision_count = n_params(torchvision.models.googlenet(aux_logits=False, init_weights=False))
    assert torchvision_count == 6_624_904
    assert n_params(GoogLeNet(num_classes=1000, branch5_kernel=3)) == torchvision_count
    # a 5x5 kernel has 16 more weights per (#5x5 reduce, #5x5) pair than a 3x3 one: 16 * 23,808
    assert n_params(GoogLeNet(num_classes=1000)) == torchvision_count + 380_928 == 7_005_832


def test_googlenet_aux_logits_only_in_training():
    model = googlenet_small(width=0.125, num_classes=4, aux_logits=True)
    x = torch.randn(2, 3, 16, 16)
    out = model.train()(x)
    assert isinstance(out, AuxLogits)
    assert out.logits.shape == (2, 4)
    assert [a.shape for a in out.aux] == [(2, 4), (2, 4)]
    with torch.no_grad():
        assert isinstance(model.eval()(x), torch.Tensor)
        assert isinstance(googlenet_small(width=0.125).train()(x), torch.Tensor)


def test_identity_block_passes_input_through_and_plain_block_does_not():
    residual, plain = BasicBlock(8, 8, shortcut="A").eval(), BasicBlock(8, 8, shortcut="none").eval()
    plain.load_state_dict(residual.state_dict())
    for block in (residual, plain):
        torch.nn.init.zeros_(block.bn2.weight)  # the residual branch now outputs zeros
    x = torch.rand(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x)
        assert torch.count_nonzero(plain(x)) == 0


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(8, 16, stride=2, shortcut="A").eval()
    torch.nn.init.zeros_(block.bn2.weight)
    x = torch.rand(2, 8, 6, 6)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 16, 3, 3)
    torch.testing.assert_close(out[:, :8], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 8:]) == 0


def test_plain_network_has_the_same_layers_but_no_shortcuts():
    torch.manual_seed(0)
    residual, plain = resnet20(width=4).eval(), plain20(width=4).eval()
    plain.load_state_dict(residual.state_dict(), strict=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(residual(x), plain(x))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: ResNet(depth=21), r"depth.*6n\+2.*21"),
        (lambda: ResNet(depth=19, style="imagenet"), r"depth.*18, 34, 50, 101, 152.*19"),
        (lambda: ResNet(style="vgg"), r"style.*'cifar', 'imagenet'.*'vgg'"),
        (lambda: ResNet(shortcut="C"), r"shortcut.*'A', 'B', 'none'.*'C'"),
        (lambda: GoogLeNet(branch5_kernel=7), r"branch5_kernel.*7"),
        (lambda: CNN(channels=()), r"channels"),
        (lambda: TimmNet("resnet81"), r"'resnet81'.*resnet18"),
        (lambda: TimmNet("resnet18.bogus"), r"'bogus'.*resnet18\.a1_in1k"),
    ],
)
def test_invalid_arguments_raise_config_error(build, expected):
    with pytest.raises(ConfigError, match=expected):
        build()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty weight caches, and any attempt to download fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", no_network)
    return tmp_path


def test_timm_pretrained_without_local_weights_raises(offline):
    with pytest.raises(ConfigError, match=r"No local pretrained weights.*'resnet18'.*pretrained: /path"):
        TimmNet("resnet18", pretrained=True)


def test_timm_pretrained_missing_path_raises(offline):
    missing = offline / "missing.safetensors"
    with pytest.raises(ConfigError, match=r"missing\.safetensors.*does not exist"):
        TimmNet("test_resnet", pretrained=str(missing))


def test_timm_pretrained_from_the_local_hugging_face_cache(offline):
    source = timm.create_model("test_resnet")
    revision = "0" * 40
    repo = offline / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(source.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))

    model = TimmNet("test_resnet", pretrained=True, num_classes=1000)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_pretrained_path_round_trip(offline, suffix):
    source = timm.create_model("test_resnet", num_classes=10)
    path = offline / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))

    model = TimmNet("test_resnet", pretrained=str(path), num_classes=10)
    loaded = model.model.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_timm_image_size_reaches_vit_only():
    vit = TimmNet("test_vit", image_size=32, num_classes=3)
    assert tuple(vit.model.patch_embed.img_size) == (32, 32)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    cnn = TimmNet("test_resnet", image_size=32, num_classes=3)
    assert cnn(torch.randn(2, 3, 48, 48)).shape == (2, 3)
