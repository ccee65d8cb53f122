"""Training recipes: the optimizer, schedule, epochs, batch size, weight decay and
binarizer parameters each official implementation uses for its CIFAR-10 experiments.

Pure data and lookup (no torch, no TF). ``bnn-export train --recipe NAME`` starts from a
recipe and lets every flag given explicitly override the recipe's value. Each value
carries its source (repository and file, or paper section) in ``Recipe.sources``; values
that could not be checked against the source are listed in ``Recipe.uncertain``.
docs/recipes.md explains each recipe and what the official code does that these
settings do not reproduce.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.train_settings import TrainSettings

#: TrainSettings fields a recipe may set (the run-control fields stay the user's).
RECIPE_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "momentum",
    "nesterov",
    "schedule",
    "warmup_epochs",
    "milestones",
    "gamma",
    "lr_interval",
)


@dataclass(frozen=True)
class Recipe:
    """A named training configuration taken from an official implementation."""

    name: str
    summary: str
    model: str
    binarizer: str
    #: the binarizer's registry parameters (``bnn_export.binarizers.get``)
    binarizer_params: dict[str, Any]
    #: ``TrainSettings`` fields (a subset of ``RECIPE_SETTINGS``)
    settings: dict[str, Any]
    #: for every key of ``settings`` and ``binarizer_params`` and for "model",
    #: "binarizer" and "dataset": where the value comes from
    sources: dict[str, str]
    #: keys whose value could not be checked against its source
    uncertain: frozenset[str] = field(default_factory=frozenset)
    #: dataset name (its directory is the user's: ``--dataset cifar10:DIR``)
    dataset: str = "cifar10"

    def keys(self) -> list[str]:
        """Every value the recipe sets: model, binarizer, dataset, settings, parameters."""
        return ["model", "binarizer", "dataset", *self.settings, *self.binarizer_params]

    def train_settings(self, **overrides: Any) -> TrainSettings:
        """The recipe's ``TrainSettings`` (fields it does not set at their defaults)."""
        return TrainSettings(**{**self.settings, "recipe": self.name, **overrides})


# --- sources ---------------------------------------------------------------------------

_IRNET = "htqin/IR-Net CIFAR-10/ResNet20/1w1a/trainer.py"
_SDBNN20 = "pingxue-hfut/SD-BNN cifar10/ResNet20/trainer.py"
_SDBNN18 = "pingxue-hfut/SD-BNN cifar10/ResNet18/trainer.py"
_SIMAN = "lmbxmu/SiMaN README.md (CIFAR-10 command) and cifar/run.sh"
_SIMAN_MAIN = "lmbxmu/SiMaN cifar/main.py"
_EB = "liyunqianggyn/Equal-Bits-BNN CIFAR10/args.py"
_EB_TRAINER = "liyunqianggyn/Equal-Bits-BNN CIFAR10/trainer.py"
_GWT = (
    "Shulman 2021, arXiv 2107.01400, abstract (momentum SGD, large learning rates, L2, "
    "'similar hyperparameter settings as their full-precision counterparts')"
)
_HE = "He et al. 2016 (Deep Residual Learning), sec. 4.2, CIFAR-10 ResNet training"


def _sgd_cosine_per_epoch(src: str, optimizer_line: str, cosine_line: str) -> dict[str, str]:
    return {
        "optimizer": f"{src}: {optimizer_line}",
        "momentum": f"{src}: --momentum default 0.9",
        "nesterov": f"{src}: torch.optim.SGD without nesterov",
        "schedule": f"{src}: {cosine_line}",
        "lr_interval": f"{src}: lr_scheduler.step() once per epoch",
        "warmup_epochs": f"{src}: no warm-up (the resnet110/1202 warm-up branch does not apply)",
    }


def _irnet() -> Recipe:
    src = _IRNET
    return Recipe(
        name="irnet-resnet20",
        summary="IR-Net ResNet-20: SGD 0.1 m0.9, wd 1e-4, cosine/epoch, 400 ep, batch 128, "
        "EDE t 1e-3..10",
        model="resnet20",
        binarizer="irnet",
        binarizer_params={"t_min": 1e-3, "t_max": 10.0},
        settings={
            "epochs": 400,
            "batch_size": 128,
            "lr": 0.1,
            "weight_decay": 1e-4,
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "lr_interval": "epoch",
        },
        sources={
            "model": f"{src}: --arch default resnet20_1w1a",
            "binarizer": "htqin/IR-Net CIFAR-10/ResNet20/1w1a/modules/ir_1w1a.py",
            "dataset": f"{src}: datasets.CIFAR10",
            "epochs": f"{src}: --epochs default 400",
            "batch_size": f"{src}: --batch-size default 128",
            "lr": f"{src}: --lr default 0.1",
            "weight_decay": f"{src}: --weight-decay default 1e-4, on model.parameters() (all)",
            **_sgd_cosine_per_epoch(
                src,
                "torch.optim.SGD(model.parameters(), ...)",
                "CosineAnnealingLR(optimizer, args.epochs, eta_min=0)",
            ),
            "t_min": f"{src}: T_min, T_max = 1e-3, 1e1",
            "t_max": f"{src}: T_min, T_max = 1e-3, 1e1",
        },
    )


def _sdbnn(model: str, src: str, *, epochs: int, lr: float) -> Recipe:
    depth = model.removeprefix("resnet")
    module = (
        "cifar10/ResNet20/modules/ir_1w1a.py"
        if model == "resnet20"
        else "cifar10/ResNet18/ir_1w1a.py"
    )
    return Recipe(
        name=f"sdbnn-{model}",
        summary=f"SD-BNN ResNet-{depth}: SGD {lr:g} m0.9, wd 1e-4, cosine/epoch, {epochs} ep, "
        "batch 128, EDE t 1e-3..10, SE shift",
        model=model,
        binarizer="sdbnn",
        binarizer_params={"t_min": 1e-3, "t_max": 10.0, "activation": "se"},
        settings={
            "epochs": epochs,
            "batch_size": 128,
            "lr": lr,
            "weight_decay": 1e-4,
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "lr_interval": "epoch",
        },
        sources={
            "model": f"{src}: --arch default "
            + ("resnet20_1w1a" if model == "resnet20" else "ResNet18"),
            "binarizer": f"pingxue-hfut/SD-BNN {module}",
            "dataset": f"{src}: datasets.CIFAR10",
            "epochs": f"{src}: --epochs default {epochs}",
            "batch_size": f"{src}: --batch-size default 128",
            "lr": f"{src}: --lr default {lr:g}",
            "weight_decay": f"{src}: --weight-decay default 1e-4, on model.parameters() (all, "
            "alpha and the SE branch included)",
            **_sgd_cosine_per_epoch(
                src,
                "torch.optim.SGD(model.parameters(), ...)",
                "CosineAnnealingLR(optimizer, args.epochs, eta_min=0)",
            ),
            "t_min": f"{src}: T_min, T_max = 1e-3, 1e1",
            "t_max": f"{src}: T_min, T_max = 1e-3, 1e1",
            "activation": f"pingxue-hfut/SD-BNN {module}: a + self.dybeta(a), "
            "dybeta = se_module.SELayer",
        },
    )


def _siman(model: str) -> Recipe:
    depth = model.removeprefix("resnet")
    return Recipe(
        name=f"siman-{model}",
        summary=f"SiMaN ResNet-{depth}: SGD 0.1 m0.9, wd 5e-4 (none on binary weights/alpha), "
        "5 warm-up + cosine/epoch, 400 ep, batch 256",
        model=model,
        binarizer="siman",
        binarizer_params={"clip_percent": 15.0, "code": "pm1"},
        settings={
            "epochs": 400,
            "batch_size": 256,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "schedule": "cosine",
            "warmup_epochs": 5,
            "lr_interval": "epoch",
        },
        sources={
            "model": f"{_SIMAN}: --model resnet18_1w1a (or resnet20_1w1a ...); "
            "cifar/utils/options.py --model default resnet20_1w1a",
            "binarizer": "lmbxmu/SiMaN cifar/modules/binarized_modules.py",
            "dataset": f"{_SIMAN}: --dataset cifar10",
            "epochs": f"{_SIMAN}: --epochs 400",
            "batch_size": f"{_SIMAN}: -b 256",
            "lr": f"{_SIMAN}: --lr 0.1",
            "weight_decay": f"{_SIMAN}: --weight_decay 5e-4; {_SIMAN_MAIN}: the convs inside "
            "'layer' blocks (binarized weights, alpha) get weight_decay 0., the rest 5e-4 "
            "(the siman binarizer's no_weight_decay rule)",
            "optimizer": "lmbxmu/SiMaN cifar/utils/options.py: --optimizer default sgd",
            "momentum": "lmbxmu/SiMaN cifar/utils/options.py: --momentum default 0.9",
            "nesterov": f"{_SIMAN_MAIN}: torch.optim.SGD without nesterov",
            "schedule": f"{_SIMAN}: --lr_type cos; {_SIMAN_MAIN}: "
            "CosineAnnealingLR(optimizer, args.epochs - args.warm_up * 4, eta_min=0), "
            "stepped from epoch 4 on",
            "warmup_epochs": f"{_SIMAN}: --warm_up; {_SIMAN_MAIN}: lr = args.lr * (epoch+1) / 5 "
            "for epoch < 5",
            "lr_interval": f"{_SIMAN_MAIN}: lr set and stepped once per epoch",
            "clip_percent": f"{_SIMAN_MAIN} (commit 68664c0): "
            "percent = 15.0 * (1 - epoch / args.epochs)",
            "code": "lmbxmu/SiMaN cifar/modules/binarized_modules.py: "
            "bw = X2 - X2.detach() + self.B.mul(2).sub(1) (2B - 1)",
        },
    )


def _equal_bits(model: str, prune_rate: float, suffix: str = "") -> Recipe:
    depth = model.removeprefix("resnet")
    pruned = prune_rate > 0
    summary = (
        f"Equal Bits ResNet-{depth}: SGD 0.1 m0.9, wd 5e-4, steps at 150/250/320, 350 ep, "
        "batch 128, "
        + ("halfmask pruning 0.5 (not exportable)" if pruned else "no pruning (exportable)")
    )
    sources = {
        "model": f"{_EB}: --arch default resnet18",
        "binarizer": "liyunqianggyn/Equal-Bits-BNN CIFAR10/utils.py (half, halfmask)",
        "dataset": f"{_EB_TRAINER}: datasets.CIFAR10",
        "epochs": f"{_EB}: --epochs default 350",
        "batch_size": f"{_EB}: --batch-size default 128",
        "lr": f"{_EB}: --lr default 0.1",
        "weight_decay": f"{_EB}: --weight-decay default 5e-4, on model.parameters() (all)",
        "optimizer": f"{_EB_TRAINER}: torch.optim.SGD(model.parameters(), ...)",
        "momentum": f"{_EB}: --momentum default 0.9",
        "nesterov": f"{_EB_TRAINER}: torch.optim.SGD without nesterov",
        "schedule": f"{_EB_TRAINER}: adjust_learning_rate, lr *= 0.1 at update_list",
        "milestones": f"{_EB_TRAINER}: update_list = [150, 250, 320]",
        "gamma": f"{_EB_TRAINER}: param_group['lr'] * 0.1",
        "warmup_epochs": f"{_EB_TRAINER}: no warm-up",
        "lr_interval": f"{_EB_TRAINER}: adjust_learning_rate(optimizer, epoch) once per epoch",
        "bit_ratio": "liyunqianggyn/Equal-Bits-BNN CIFAR10/utils.py: half of each filter "
        "-1, half +1",
        "granularity": "liyunqianggyn/Equal-Bits-BNN CIFAR10/utils.py: "
        "scores.view(scores.size(0), -1).sort() (per output channel)",
        "prune_rate": (
            f"{_EB}: --binarization-mode default halfmask, --prune-rate default 0.5"
            if pruned
            else f"{_EB_TRAINER}: __main__ trains prune_rate_all = [0.0, 0.5]; this is the "
            "0.0 run (halfmask with k = 0 is the unpruned half/half code)"
        ),
    }
    uncertain: set[str] = set()
    if model != "resnet18":
        sources["model"] = (
            f"ours: the official CIFAR-10 code has resnet18/resnet34 only ({_EB}); this "
            "applies its settings to ResNet-20"
        )
        uncertain.add("model")
    return Recipe(
        name=f"equal-bits-{model}{suffix}",
        summary=summary,
        model=model,
        binarizer="equal_bits",
        binarizer_params={"bit_ratio": 0.5, "granularity": "channel", "prune_rate": prune_rate},
        settings={
            "epochs": 350,
            "batch_size": 128,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "schedule": "step",
            "milestones": (150, 250, 320),
            "gamma": 0.1,
            "warmup_epochs": 0,
            "lr_interval": "epoch",
        },
        sources=sources,
        uncertain=frozenset(uncertain),
    )


def _gwt() -> Recipe:
    values = f"{_HE}, which {_GWT} points to; GWT's own CIFAR-10 values were not available"
    return Recipe(
        name="gwt-resnet20",
        summary="GWT ResNet-20 (from the paper's text, values uncertain): SGD 0.1 m0.9, "
        "wd 1e-4, steps at 82/123, 164 ep, batch 128",
        model="resnet20",
        binarizer="gwt",
        binarizer_params={"beta_min": 1.0, "beta_max": 100.0},
        settings={
            "epochs": 164,
            "batch_size": 128,
            "lr": 0.1,
            "weight_decay": 1e-4,
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "schedule": "step",
            "milestones": (82, 123),
            "gamma": 0.1,
            "warmup_epochs": 0,
            "lr_interval": "epoch",
        },
        sources={
            "model": f"ours: the CIFAR-10 ResNet of {_HE}",
            "binarizer": "bnn_export's gwt, built from the paper's description (docs/binarizers.md)",
            "dataset": "Shulman 2021, arXiv 2107.01400, abstract: image classification tasks",
            "epochs": f"{values}: 64k iterations = 164 epochs of 391 steps",
            "batch_size": f"{values}: mini-batch 128",
            "lr": f"{values}: learning rate 0.1",
            "weight_decay": f"{values}: weight decay 1e-4 (L2)",
            "optimizer": f"{_GWT}: momentum SGD",
            "momentum": f"{values}: momentum 0.9",
            "nesterov": f"{values}: plain momentum",
            "schedule": f"{values}: divided by 10 at 32k and 48k iterations",
            "milestones": f"{values}: 32k, 48k iterations = epochs 82, 123",
            "gamma": f"{values}: divided by 10",
            "warmup_epochs": f"{values}: no warm-up for ResNet-20",
            "lr_interval": f"{values}: the drops fall on epoch boundaries",
            "beta_min": "bnn_export's gwt default (the paper's annealing values were not "
            "available)",
            "beta_max": "bnn_export's gwt default (the paper's annealing values were not "
            "available)",
        },
        uncertain=frozenset(
            {
                "model",
                "epochs",
                "batch_size",
                "lr",
                "weight_decay",
                "momentum",
                "nesterov",
                "schedule",
                "milestones",
                "gamma",
                "warmup_epochs",
                "lr_interval",
                "beta_min",
                "beta_max",
            }
        ),
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        _irnet(),
        _siman("resnet20"),
        _siman("resnet18"),
        _equal_bits("resnet18", 0.5),
        _equal_bits("resnet18", 0.0, "-noprune"),
        _equal_bits("resnet20", 0.5),
        _sdbnn("resnet20", _SDBNN20, epochs=500, lr=0.11),
        _sdbnn("resnet18", _SDBNN18, epochs=600, lr=0.08),
        _gwt(),
    ]
}


def names() -> list[str]:
    """Recipe names, in listing order."""
    return list(RECIPES)


def get(name: str) -> Recipe:
    """The recipe called ``name``; ``BnnExportError`` listing the valid names otherwise."""
    if name not in RECIPES:
        raise unknown_name("recipe", name, RECIPES)
    return RECIPES[name]


def resolve(
    recipe: Recipe, values: dict[str, Any], explicit: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge a recipe under the values the user gave explicitly.

    ``values`` holds "model", "binarizer" and ``TrainSettings`` fields (defaults
    included); ``explicit`` names those the user set. Returns the merged values and the
    binarizer parameters to start from: the recipe's when the binarizer is the recipe's,
    none when the user picked another binarizer (explicitly given binarizer options go
    on top of these, by the caller). A schedule explicitly switched away from ``step``
    drops the recipe's milestones.
    """
    given = set(explicit)
    unknown = set(values) - {"model", "binarizer", *_settings_fields()}
    if unknown:
        raise BnnExportError(f"cannot apply a recipe to {', '.join(sorted(unknown))}")
    merged = dict(values)
    recipe_values = {"model": recipe.model, "binarizer": recipe.binarizer, **recipe.settings}
    for key, value in recipe_values.items():
        if key not in given:
            merged[key] = value
    if merged.get("schedule") != "step" and "milestones" not in given:
        merged["milestones"] = ()
    params = dict(recipe.binarizer_params) if merged["binarizer"] == recipe.binarizer else {}
    return merged, params


def _settings_fields() -> list[str]:
    return [f.name for f in fields(TrainSettings)]
