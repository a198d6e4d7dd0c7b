"""U-Net, DCGAN and the autoencoders: shapes at odd sizes, the paper's module names, bad arguments."""

import pytest
import torch

from archlab.errors import ConfigError
from archlab.models import DCGAN, AutoEncoder, UNet, vae


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("size", [(17, 19), (5, 7), (1, 1), (33, 64), (64, 31)])
def test_unet_output_has_the_input_size(size: tuple[int, int], upsampling: str):
    net = UNet(in_channels=3, num_classes=4, depth=3, width=4, upsampling=upsampling).eval()
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 4, *size)


def test_unet_every_parameter_gets_a_gradient_and_names_follow_the_paper():
    net = UNet(in_channels=1, num_classes=2, depth=4, width=4)
    names = {name for name, _ in net.named_children()}
    assert {"inc", "down1", "down2", "down3", "down4", "up1", "up2", "up3", "up4", "outc"} == names
    net(torch.randn(2, 1, 23, 21)).logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_unet_skip_connections_carry_the_encoders_features():
    # With the deepest path cut off, the output still depends on the input through the skips alone.
    net = UNet(in_channels=1, num_classes=2, depth=2, width=4).eval()
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    net.up1.up.weight.data.zero_()
    net.up1.up.bias.data.zero_()
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_unet_without_skips_depends_on_the_input_only_through_the_deepest_path():
    net = UNet(in_channels=1, num_classes=2, depth=2, width=4, skips=False).eval()
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    assert net(x).shape == (1, 2, 16, 16)
    net.up1.up.weight.data.zero_()
    net.up1.up.bias.data.zero_()
    net(x).sum().backward()
    assert x.grad.abs().sum() == 0
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in UNet(depth=2, width=4).parameters())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"depth": 0}, "depth"), ({"upsampling": "nearest"}, "bilinear"), ({"num_classes": 1}, "num_classes")],
)
def test_unet_bad_arguments_are_named(kwargs: dict, named: str):
    with pytest.raises(ConfigError, match=named):
        UNet(**kwargs)


@pytest.mark.parametrize("encoder", ["conv", "mlp"])
@pytest.mark.parametrize("image_size", [8, 9, 28])
def test_vae_returns_mean_and_log_variance(encoder: str, image_size: int):
    net = vae(in_channels=1, image_size=image_size, latent_dim=5, encoder=encoder, widths=(8, 16))
    out = net(torch.rand(3, 1, image_size, image_size))
    assert out.logits.shape == (3, 1, image_size, image_size)
    assert out.mean.shape == out.logvar.shape == out.code.shape == (3, 5)
    assert not torch.equal(out.code, out.mean)  # a sample, not the mean
    assert net.decode(torch.randn(4, 5)).shape == (4, 1, image_size, image_size)


def test_autoencoder_code_activations():
    x = torch.rand(4, 3, 32, 32)
    plain = AutoEncoder(in_channels=3, image_size=32, latent_dim=6)(x)
    assert plain.mean is None and plain.logvar is None and plain.logits.shape == x.shape
    sigmoid = AutoEncoder(in_channels=3, image_size=32, latent_dim=6, code_activation="sigmoid")(x)
    assert ((sigmoid.code > 0) & (sigmoid.code < 1)).all()
    with pytest.raises(ConfigError, match="code_activation"):
        AutoEncoder(code_activation="tanh")
    with pytest.raises(ConfigError, match="encoder"):
        AutoEncoder(encoder="transformer")


@pytest.mark.parametrize("image_size", [8, 27, 28, 32])
def test_dcgan_generator_and_discriminator_fit_the_image_size(image_size: int):
    gan = DCGAN(in_channels=3, image_size=image_size, latent_dim=7, width=4)
    images, logits = gan(torch.randn(5, 7))
    assert images.shape == (5, 3, image_size, image_size)
    assert ((images >= 0) & (images <= 1)).all()
    assert logits.shape == (5,)
    assert gan.discriminator(torch.rand(2, 3, image_size, image_size)).shape == (2,)
    # Two separate modules: no parameter is shared, so each can have its own optimizer.
    g, d = set(map(id, gan.generator.parameters())), set(map(id, gan.discriminator.parameters()))
    assert g and d and not g & d
