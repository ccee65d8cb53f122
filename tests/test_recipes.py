"""Optimizers, learning-rate schedules and recipes (bnn_export/optim_torch.py,
lr_schedule.py, recipes.py, ``train --recipe``, ``list``).

The schedules are checked against the official trainers' own loops, replayed here with
torch's schedulers exactly as those scripts call them (IR-Net / SD-BNN: cosine stepped per
epoch; SiMaN: 5 warm-up epochs then cosine over epochs - 4; Equal Bits: lr *= 0.1 at
epochs 150, 250, 320).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bnn_export import binarizers
from bnn_export import recipes as rc
from bnn_export.cli import main
from bnn_export.errors import BnnExportError
from bnn_export.lr_schedule import check_optimization, lr_factor, lr_factors
from bnn_export.models import ARCHS, arch_spec
from bnn_export.models.torch_build import build_torch_model
from bnn_export.optim_torch import make_optimizer, make_scheduler
from bnn_export.train_settings import TrainSettings


def _run_lrs(settings: TrainSettings, steps_per_epoch: int) -> list[float]:
    """The rate each optimizer step uses, through make_optimizer/make_scheduler."""
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, settings)
    sched = make_scheduler(opt, settings, steps_per_epoch)
    lrs = []
    for _ in range(settings.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _per_epoch(lrs: list[float], steps_per_epoch: int) -> list[float]:
    """One rate per epoch, checking it is constant within the epoch."""
    out = []
    for e in range(len(lrs) // steps_per_epoch):
        chunk = lrs[e * steps_per_epoch : (e + 1) * steps_per_epoch]
        assert max(chunk) == min(chunk), f"rate changes inside epoch {e}"
        out.append(chunk[0])
    return out


def test_default_schedule_is_the_original_adam_cosine() -> None:
    settings = TrainSettings(epochs=3, lr=1e-2)
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, settings)
    assert type(opt) is torch.optim.Adam
    assert opt.defaults["lr"] == 1e-2 and opt.defaults["weight_decay"] == 0
    sched = make_scheduler(opt, settings, steps_per_epoch=5)
    assert type(sched) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert sched.T_max == 15
    # and the pure-Python schedule (Larq's non-default path, LambdaLR) is the same curve
    lrs = _run_lrs(settings, 5)
    expected = [1e-2 * f for f in lr_factors(settings, 5)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert lrs[0] == 1e-2 and lrs[-1] < 1e-3


def test_irnet_schedule_matches_official_loop() -> None:
    """htqin/IR-Net trainer.py: CosineAnnealingLR(opt, epochs, eta_min=0), step() after
    each epoch."""
    epochs, spe = 12, 3
    settings = replace(rc.get("irnet-resnet20").train_settings(), epochs=epochs)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
    official_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0)
    official = []
    for _ in range(epochs):
        official.append(opt.param_groups[0]["lr"])
        opt.step()
        official_sched.step()
    ours = _per_epoch(_run_lrs(settings, spe), spe)
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-12)


def test_siman_schedule_matches_official_loop() -> None:
    """lmbxmu/SiMaN cifar/main.py with --warm_up: lr = lr * (epoch+1)/5 for epoch < 5,
    CosineAnnealingLR(opt, epochs - 4) stepped after each epoch >= 4."""
    epochs, spe, lr = 20, 2, 0.1
    settings = replace(rc.get("siman-resnet20").train_settings(), epochs=epochs)
    opt = torch.optim.SGD([{"params": nn.Linear(2, 2).parameters(), "initial_lr": lr}], lr=lr)
    official_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, epochs - 4, eta_min=0, last_epoch=-1
    )
    official = []
    for epoch in range(epochs):
        if epoch < 5:
            for group in opt.param_groups:
                group["lr"] = lr * (epoch + 1) / 5
        official.append(opt.param_groups[0]["lr"])
        opt.step()
        if epoch >= 4:
            official_sched.step()
    ours = _per_epoch(_run_lrs(settings, spe), spe)
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-12)
    assert ours[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])


def test_equal_bits_schedule_matches_official_loop() -> None:
    """liyunqianggyn/Equal-Bits-BNN CIFAR10/trainer.py: adjust_learning_rate multiplies by
    0.1 at the start of epochs 150, 250, 320 (of 350)."""
    settings = rc.get("equal-bits-resnet18").train_settings()
    lr, official = 0.1, []
    for epoch in range(settings.epochs):
        if epoch in [150, 250, 320]:
            lr *= 0.1
        official.append(lr)
    ours = [settings.lr * lr_factor(e * 4, settings, 4) for e in range(settings.epochs)]
    assert ours == pytest.approx(official, rel=1e-12)


def test_warmup_per_step_then_cosine() -> None:
    s = TrainSettings(epochs=4, lr=1.0, warmup_epochs=1)
    f = lr_factors(s, steps_per_epoch=4)
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the last warm-up step is the peak
    # cosine from the peak at step 3 over the remaining 13 steps
    assert f[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 13)))
    assert all(a > b for a, b in zip(f[3:], f[4:], strict=False))
    constant = lr_factors(replace(s, schedule="constant"), 4)
    assert constant[3:] == [1.0] * 13


def test_optimizers_and_weight_decay_groups() -> None:
    arch = arch_spec("digits")
    model = build_torch_model(arch, binarizers.get("siman"), seed=0)
    s = TrainSettings(optimizer="sgd", momentum=0.8, nesterov=True, weight_decay=5e-4, lr=0.1)
    opt = make_optimizer(model, s)
    assert type(opt) is torch.optim.SGD
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert decayed["momentum"] == 0.8 and decayed["nesterov"] is True
    free_ids = {id(p) for p in free["params"]}
    from bnn_export.models.layers import binary_layers

    for _, layer in binary_layers(model):  # SiMaN: latent weights and alpha undecayed
        assert id(layer.weight) in free_ids
        assert all(id(p) in free_ids for p in layer.weight_quantizer.no_weight_decay_parameters())
    assert len(free["params"]) > 0 and len(decayed["params"]) > 0
    adamw = make_optimizer(model, replace(s, optimizer="adamw", nesterov=False))
    assert type(adamw) is torch.optim.AdamW
    assert adamw.param_groups[0]["weight_decay"] == 5e-4
    assert adamw.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"schedule": "poly"}, "unknown schedule 'poly'"),
        ({"lr_interval": "batch"}, "unknown lr_interval"),
        ({"milestones": (10,)}, "milestones only apply to the step schedule"),
        ({"schedule": "step"}, "the step schedule needs milestones"),
        ({"schedule": "step", "milestones": (20, 10)}, "milestones must be increasing"),
        ({"nesterov": True}, "nesterov momentum needs the sgd optimizer"),
        ({"momentum": 1.0, "optimizer": "sgd"}, "momentum must be a number in [0, 1)"),
        ({"gamma": 0.0}, "gamma must be"),
        ({"warmup_epochs": -1}, "warmup_epochs must be"),
        ({"weight_decay": float("nan")}, "weight_decay must be"),
        ({"devices": 0}, "devices must be"),
    ],
)
def test_bad_optimization_settings_are_refused(change: dict[str, object], words: str) -> None:
    with pytest.raises(BnnExportError) as err:
        check_optimization(replace(TrainSettings(), **change))  # type: ignore[arg-type]
    assert words in str(err.value)


# --- recipes: data ------------------------------------------------------------------


@pytest.mark.parametrize("name", rc.names())
def test_every_recipe_value_has_a_source_and_is_valid(name: str) -> None:
    recipe = rc.get(name)
    assert set(recipe.sources) == set(recipe.keys()), "a value without a source"
    assert all(src.strip() for src in recipe.sources.values())
    assert recipe.uncertain <= set(recipe.keys())
    assert set(recipe.settings) <= set(rc.RECIPE_SETTINGS)
    assert recipe.model in ARCHS
    config = binarizers.get(recipe.binarizer, **recipe.binarizer_params)  # validates
    assert config.params == {**config.info.defaults, **recipe.binarizer_params}
    check_optimization(recipe.train_settings())
    docs = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()
    assert f"`{name}`" in docs, "recipe missing from docs/recipes.md"


def test_recipe_facts_from_the_issue() -> None:
    assert rc.get("irnet-resnet20").binarizer_params["t_min"] == 1e-3
    assert rc.get("sdbnn-resnet20").binarizer_params["t_min"] == 1e-3
    eb = rc.get("equal-bits-resnet18")
    assert eb.binarizer_params["prune_rate"] == 0.5 and eb.model == "resnet18"
    assert rc.get("gwt-resnet20").uncertain >= {"lr", "epochs", "weight_decay"}


def test_unknown_recipe_lists_valid_names() -> None:
    with pytest.raises(BnnExportError, match="unknown recipe 'irnet'; valid: .*irnet-resnet20"):
        rc.get("irnet")


def test_resolve_explicit_values_win() -> None:
    recipe = rc.get("equal-bits-resnet18")
    values = {"model": "digits", "binarizer": "ste", "epochs": 20, "lr": 0.01, "schedule": "cosine",
              "milestones": ()}  # fmt: skip
    merged, params = rc.resolve(recipe, values, explicit={"epochs"})
    assert merged["epochs"] == 20 and merged["lr"] == 0.1 and merged["model"] == "resnet18"
    assert merged["milestones"] == (150, 250, 320) and params["prune_rate"] == 0.5
    merged, params = rc.resolve(recipe, values, explicit={"binarizer", "schedule"})
    assert merged["binarizer"] == "ste" and params == {}  # the recipe's params are Equal Bits'
    assert merged["schedule"] == "cosine" and merged["milestones"] == ()


# --- recipes: CLI -----------------------------------------------------------------------


def _train(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "run"
    assert main(["train", *args, "--quiet", "-o", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_train_recipe_records_resolved_settings(tmp_path: Path) -> None:
    metrics = _train(
        tmp_path,
        "--recipe", "siman-resnet20", "--model", "digits", "--dataset", "digits",
        "--epochs", "1", "--batch-size", "512",
    )  # fmt: skip
    settings = metrics["settings"]
    assert isinstance(settings, dict)
    recipe = rc.get("siman-resnet20")
    for key in ("lr", "weight_decay", "optimizer", "momentum", "schedule", "warmup_epochs",
                "lr_interval"):  # fmt: skip
        assert settings[key] == recipe.settings[key], key
    assert settings["recipe"] == "siman-resnet20"
    assert settings["epochs"] == 1 and settings["batch_size"] == 512  # explicit flags win
    assert metrics["model"] == "digits"
    assert metrics["binarizer"] == {
        "name": "siman",
        "params": {"clip_percent": 15.0, "code": "pm1"},
    }


def test_train_recipe_binarizer_params_and_overrides(tmp_path: Path) -> None:
    metrics = _train(
        tmp_path,
        "--recipe", "equal-bits-resnet18", "--model", "digits", "--dataset", "digits",
        "--epochs", "1", "--prune-rate", "0", "--lr", "0.05", "--batch-size", "512",
    )  # fmt: skip
    settings = metrics["settings"]
    assert isinstance(settings, dict)
    assert settings["lr"] == 0.05 and settings["schedule"] == "step"
    assert settings["milestones"] == [150, 250, 320]
    assert metrics["binarizer"] == {
        "name": "equal_bits",
        "params": {"bit_ratio": 0.5, "granularity": "channel", "prune_rate": 0.0},
    }


def test_train_recipe_without_dataset_dir_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--recipe", "irnet-resnet20", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "irnet-resnet20" in err and "--dataset cifar10:DIR" in err


def test_train_flags_without_recipe(tmp_path: Path) -> None:
    metrics = _train(
        tmp_path,
        "--epochs", "2", "--optimizer", "sgd", "--momentum", "0.5", "--schedule", "step",
        "--milestones", "1", "--gamma", "0.5", "--lr-interval", "epoch", "--batch-size", "512",
    )  # fmt: skip
    settings = metrics["settings"]
    assert isinstance(settings, dict)
    assert settings["optimizer"] == "sgd" and settings["momentum"] == 0.5
    assert settings["milestones"] == [1] and settings["recipe"] is None


def test_train_bad_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--milestones", "a,b", "--schedule", "step", "--epochs", "1"]) == 2
    assert "--milestones" in capsys.readouterr().err
    assert main(["train", "--devices", "2", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--devices" in err and "torchrun" in err


def test_list_shows_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["recipes"] == {name: rc.get(name).summary for name in rc.names()}
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "recipes:" in text and "irnet-resnet20" in text
