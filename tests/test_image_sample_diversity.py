"""The default sampler's chains from noise stay diverse where the paper's collapse to a point."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from imagebm.models import ImageEBMConfig
from imagebm.sample import SampleConfig, class_diversity, sample_images
from imagebm.train import ImageRun, preset
from trajebm.engine.errors import UsageError


class Bowl(nn.Module):
    """A known energy with one mode per class: 0.01 ||x - 0.5||^2 (gradient far below the clip)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ImageEBMConfig(arch="small", image_size=8, channels=1, num_classes=2)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return 0.01 * (x - 0.5).pow(2).flatten(1).sum(1)


def test_chains_from_noise_do_not_collapse_to_the_mode(tmp_path):
    run = ImageRun(tmp_path, preset("digits"), Bowl(), {})
    noise = class_diversity(torch.rand(40, 1, 8, 8), torch.arange(40) % 2)
    paper, labels, _ = sample_images(run, SampleConfig.paper(num=40), progress=False)
    default, _, _ = sample_images(run, SampleConfig(num=40), progress=False)
    assert class_diversity(paper, labels) < 0.05 * noise  # every chain at (nearly) x = 0.5
    assert class_diversity(default, labels) > 0.5 * noise


def test_class_diversity_is_zero_for_copies_and_needs_pairs():
    x = torch.rand(1, 1, 8, 8).repeat(6, 1, 1, 1)
    assert class_diversity(x, torch.tensor([0, 0, 0, 1, 1, 1])) == 0.0
    assert class_diversity(torch.eye(2).view(2, 1, 1, 2), None) == pytest.approx(2**0.5)
    with pytest.raises(UsageError, match="two images"):
        class_diversity(x[:2], torch.tensor([0, 1]))
