"""Every recipe ``bnn-export list`` offers starts a training run.

tests/test_recipes.py checks the recipes' values, schedules and the CLI's merging on two
of them (siman-resnet20, equal-bits-resnet18); this runs ``train --recipe NAME`` for each
one, on digits with ``--model digits`` and one epoch (so it is fast): the recipe's
optimizer, schedule (milestones and warm-up beyond the one epoch included) and binarizer
parameters go through the trainer. The recipe's own model (ResNet-20/18 at 3x32x32) is
only built with its binarizer: a training step of ResNet-18 with SiMaN or Equal Bits
takes seconds even at batch 2 on 2 cores (their per-step weight sorts), too slow here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bnn_export import binarizers
from bnn_export import recipes as rc
from bnn_export.binarizers.torch_impl import WeightQuantizer
from bnn_export.cli import main
from bnn_export.models import arch_spec
from bnn_export.models.torch_build import build_torch_model


def test_the_recipes_are_the_listed_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["recipes"]) == sorted(rc.names())


@pytest.mark.parametrize("name", rc.names())
def test_train_recipe_starts(name: str, tmp_path: Path) -> None:
    recipe = rc.get(name)
    out = tmp_path / "run"
    args = ["train", "--recipe", name, "--model", "digits", "--dataset", "digits"]
    assert main([*args, "--epochs", "1", "--batch-size", "256", "--quiet", "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    settings = metrics["settings"]
    assert settings["recipe"] == name
    for key in ("optimizer", "lr", "weight_decay", "schedule", "lr_interval"):
        if key in recipe.settings:
            assert settings[key] == recipe.settings[key], key
    config = binarizers.get(recipe.binarizer, **recipe.binarizer_params)
    assert metrics["binarizer"] == {"name": config.name, "params": config.params}
    (epoch,) = metrics["history"]
    assert math.isfinite(epoch["loss"]), epoch

    # the recipe's own model, built with the recipe's binarizer
    arch = arch_spec(recipe.model, num_classes=10, input_shape=(3, 32, 32))
    model = build_torch_model(arch, config, seed=0)
    quantizers = [m for m in model.modules() if isinstance(m, WeightQuantizer)]
    assert quantizers and all(q.config == config for q in quantizers)
