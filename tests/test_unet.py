import pytest
import torch

from ddpm import InputError, UNet
from ddpm.models.unet import SelfAttention, sinusoidal_embedding


@pytest.mark.parametrize(
    "in_channels, channels, attention, num_res, neck, size",
    [
        (1, [16], [False], 1, 0, 7),
        (1, [16, 32], [False, True], 1, 1, 28),
        (3, [16, 32, 32], [False, False, True], 2, 2, 32),
        (3, [8, 16, 16, 32], [False, True, False, True], 1, 1, 16),
        (1, [16, 32, 64], [False, False, False], 1, 1, 8),
    ],
)
def test_unet_output_has_the_input_shape(in_channels, channels, attention, num_res, neck, size):
    net = UNet(in_channels, channels, attention, num_res, neck, time_emb_dim=16)
    x = torch.randn(2, in_channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape


@pytest.mark.parametrize("channels, size", [([16, 32, 64], 30), ([16, 32], 7), ([16, 32, 32, 32], 28)])
def test_unet_refuses_sizes_it_cannot_halve(channels, size):
    net = UNet(1, channels, [False] * len(channels), 1, 1, 16)
    with pytest.raises(InputError, match=f"not divisible by {2 ** (len(channels) - 1)}"):
        net(torch.randn(1, 1, size, size), torch.tensor([0]))


@pytest.mark.parametrize("in_channels, channels, size", [(1, [32, 64], 28), (3, [16, 32, 32], 32)])
def test_a_patched_unet_runs_every_level_at_half_resolution(in_channels, channels, size):
    net = UNet(in_channels, channels, [False] * (len(channels) - 1) + [True], 1, 1, 16, patch_size=2)
    seen = []
    net.stem.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    x = torch.randn(2, in_channels, size, size)
    assert net(x, torch.tensor([0, 999])).shape == x.shape
    assert seen == [(2, channels[0], size // 2, size // 2)]
    assert net.stem.in_channels == 4 * in_channels and net.head.out_channels == 4 * in_channels


def test_a_patched_unet_refuses_sizes_its_patches_and_levels_cannot_divide():
    net = UNet(1, [16, 32, 64], [False] * 3, 1, 1, 16, patch_size=2)
    with pytest.raises(InputError, match="not divisible by 8, which a UNet with 3 levels and patch size 2"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([0]))
    with pytest.raises(InputError, match="patch_size must be >= 1"):
        UNet(patch_size=0)


def test_unet_depends_on_the_timestep():
    net = UNet(1, [16, 32], [False, True], 1, 1, 16)
    for p in net.parameters():  # zero-initialised output convolutions would hide the time path
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([10])), net(x, torch.tensor([900])))


def test_attention_matches_softmax_attention_by_hand():
    torch.manual_seed(0)
    layer = SelfAttention(channels=128, head_dim=64)  # two heads
    torch.nn.init.normal_(layer.out.weight, std=0.1)
    x = torch.randn(2, 128, 4, 4)
    b, c, h, w = x.shape
    q, k, v = layer.qkv(layer.norm(x)).reshape(b, 3, 2, 64, h * w).unbind(1)  # [B, heads, d, HW]
    weights = torch.softmax(q.transpose(-1, -2) @ k / 64**0.5, dim=-1)  # [B, heads, HW, HW]
    attended = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(b, c, h, w)
    assert torch.allclose(layer(x), x + layer.out(attended), atol=1e-5)


def test_sinusoidal_embedding_values():
    e = sinusoidal_embedding(torch.tensor([0, 1]), 4)
    # frequencies 1 and 10000^(-1/2) = 0.01: [sin(t), sin(0.01 t), cos(t), cos(0.01 t)]
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.841471, 0.0099998, 0.540302, 0.99995]])
    assert torch.allclose(e, expected, atol=1e-5)


def test_unet_refuses_mismatched_attention_list():
    with pytest.raises(InputError, match="attention has 2 entries"):
        UNet(1, [16, 32, 64], [False, True], 1, 1, 16)


def test_model_config_fields_are_unet_arguments_with_the_same_defaults():
    """build_network passes ModelConfig's fields to UNet by name (all but `network`, which names the
    spec that builds it), so a renamed or new field must exist there too, and `UNet()` builds the
    same network as the default config."""
    import dataclasses
    import inspect

    from ddpm.config import ModelConfig

    arguments = inspect.signature(UNet).parameters
    for field in dataclasses.fields(ModelConfig):
        if field.name == "network":
            continue
        assert field.name in arguments, f"ModelConfig.{field.name} is not a UNet argument"
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        unet_default = arguments[field.name].default
        if isinstance(default, list):  # a tuple in UNet's signature, which must not hold a mutable default
            unet_default = list(unet_default)
        assert unet_default == default, f"ModelConfig.{field.name} defaults to {default}, UNet to {unet_default}"
