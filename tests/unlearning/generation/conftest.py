"""Fixtures for the generation tests: a tiny cross-attention UNet config (seconds to train) and its model."""

from __future__ import annotations

import pytest
import torch

from unlearning.generation.model import UNetConfig, build_unet

TINY = UNetConfig(
    num_classes=3,
    image_shape=(1, 8, 8),
    sample_size=8,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    cross_attention_dim=8,
    context_tokens=2,
    attention_head_dim=8,
    norm_num_groups=4,
)


@pytest.fixture
def tiny_config() -> UNetConfig:
    return TINY


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_unet(TINY)
