"""ConditionalDiffusion: conditioning only through cross-attention tokens, the null token, encode/decode, the
SD block layout, the training noise schedule, config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unlearning.generation.model import UNetConfig, build_unet, noise_scheduler, sd_layout_unet


def test_context_shapes_and_null_token(tiny_model):
    ctx = tiny_model.context(torch.tensor([0, 2, -1, 3]))
    assert ctx.shape == (4, 3, 8) and tiny_model.context_length == 3  # [start, 2 class tokens]
    assert tiny_model.null_label == 3
    assert torch.equal(ctx[2], ctx[3])  # -1 and num_classes are both ∅
    assert not torch.equal(ctx[0, 1:], ctx[1, 1:])
    assert all(torch.equal(ctx[i, 0], tiny_model.start) for i in range(4))  # the shared start token
    assert tiny_model.tokens.num_embeddings == 4
    plain = build_unet(dataclasses.replace(tiny_model.config, start_token=False))
    assert plain.context(torch.tensor([1])).shape == (1, 2, 8) and plain.start is None


def test_bad_labels_name_the_argument(tiny_model):
    with pytest.raises(ValueError, match="labels"):
        tiny_model.context(torch.tensor([4]))
    x, t = torch.zeros(1, 1, 8, 8), torch.tensor([5])
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(x, t)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_model(x, t, labels=torch.tensor([0]), context=tiny_model.context(torch.tensor([0])))


def test_class_enters_only_through_cross_attention(tiny_model):
    cfg = tiny_model.unet.config
    assert cfg.class_embed_type is None and cfg.num_class_embeds is None and cfg.addition_embed_type is None
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    labels = torch.tensor([0, 1])
    out = tiny_model(x, t, labels=labels)
    assert torch.allclose(out, tiny_model(x, t, context=tiny_model.context(labels)))
    assert torch.allclose(out, tiny_model.unet(x, t, encoder_hidden_states=tiny_model.context(labels)).sample)
    with torch.no_grad():
        tiny_model.tokens.weight[0] += 1.0
    assert not torch.allclose(out[0], tiny_model(x, t, labels=labels)[0])
    assert torch.allclose(out[1], tiny_model(x, t, labels=labels)[1])


def test_encode_pads_and_decode_inverts(tiny_config):
    model = build_unet(dataclasses.replace(tiny_config, sample_size=12))
    x = torch.rand(3, 1, 8, 8)
    z = model.encode(x)
    assert z.shape == (3, 1, 12, 12) and model.latent_shape == (1, 12, 12)
    assert torch.allclose(z[..., 2:10, 2:10], 2 * x - 1)
    assert torch.all(z[..., :2, :] == -1) and torch.all(z[..., :, 10:] == -1)
    assert torch.allclose(model.decode(z), x, atol=1e-6)


def test_sd_layout_unet_has_stable_diffusions_blocks():
    model = sd_layout_unet(num_classes=3)
    cfg = model.unet.config
    assert tuple(cfg.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(cfg.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn" and cfg.layers_per_block == 2
    assert type(model.unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([1, 999]), labels=torch.tensor([0, -1]))
    assert out.shape == (2, 1, 16, 16)
    again = sd_layout_unet(num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_noise_scheduler_is_the_published_linear_schedule():
    s = noise_scheduler()
    assert s.config.num_train_timesteps == 1000 and s.config.beta_schedule == "linear"
    assert s.config.prediction_type == "epsilon"
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000), atol=1e-8)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"sample_size": 4}, "sample_size"),
        ({"block_out_channels": (30, 64)}, "block_out_channels"),
        ({"down_block_types": ("DownBlock2D",)}, "down_block_types"),
        ({"down_block_types": ("Nope", "DownBlock2D")}, "down_block_types"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_config_errors_name_the_field(kw, name):
    with pytest.raises(ValueError, match=f"UNetConfig.{name}"):
        UNetConfig(**kw)
