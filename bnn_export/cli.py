"""The ``bnn-export`` command line: train, convert, bench, inspect.

Every user error is a ``BnnExportError``: one ``error:`` line (plus a ``fix:`` hint)
on stderr and exit status 2; no traceback unless ``--debug``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from typing import Any

try:
    import click
except ImportError:  # a device install (`bnn-export[device]`) carries only the bench worker
    sys.exit(
        "error: the bnn-export command needs the `cli` extra, which this install lacks\n"
        "fix: pip install 'bnn-export[cli]' (a device that only runs the bench worker, "
        "python -m bnn_export.runtime.worker, does not need it)"
    )

from bnn_export import __version__
from bnn_export import binarizers as binarizer_registry
from bnn_export.datasets import DATASETS
from bnn_export.errors import BnnExportError, unknown_name
from bnn_export.fileio import check_writable
from bnn_export.models import ARCHS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnn-export")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train binary neural networks and export them to LCE TFLite and ONNX."""
    ctx.ensure_object(dict)["debug"] = debug


def _positive_lr(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise BnnExportError(f"--lr must be a positive number, got {value}")
    return value


def training_options(f: Any) -> Any:
    """The trainer options ``train`` and ``sweep`` share (``TrainSettings`` fields)."""
    options = [
        click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1)),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1)),
        click.option(
            "--lr",
            default=1e-2,
            show_default=True,
            type=float,
            callback=_positive_lr,
            help="Peak learning rate (Adam, cosine decay to 0, unless train's --optimizer, "
            "--schedule or --recipe say otherwise).",
        ),
        click.option("--seed", default=0, show_default=True, type=int),
        click.option(
            "--num-threads",
            type=click.IntRange(min=1),
            default=None,
            help="PyTorch intra-op threads (default: 1 for models under 10M MACs per "
            "sample, where more threads cost more than they give; else all cores).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def engine_options(f: Any) -> Any:
    """``train``'s PyTorch engine options: device, precision, data parallelism, data
    loading, resuming, TensorBoard (docs/training.md)."""
    options = [
        click.option(
            "--device",
            default="auto",
            show_default=True,
            help="PyTorch device: auto (CUDA when available, else CPU), cpu, cuda, cuda:N, mps.",
        ),
        click.option(
            "--precision",
            default="fp32",
            show_default=True,
            type=click.Choice(["fp32", "bf16", "fp16"]),
            help="Mixed precision of the forward pass (autocast); weights and checkpoints "
            "stay float32. fp16 (with loss scaling) needs CUDA; the CPU takes bf16.",
        ),
        click.option(
            "--nproc",
            type=click.IntRange(min=1),
            default=None,
            help="Data-parallel processes on this host (runs torch.distributed.run, as "
            "torchrun --nproc-per-node N -m bnn_export train ... would). --batch-size is "
            "the GLOBAL batch, split evenly: it must be divisible by N.",
        ),
        click.option(
            "--sync-bn/--no-sync-bn",
            default=None,
            help="Batch norm over the global batch when data-parallel (default: on with "
            "more than one process; off: each process normalizes its own share).",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="DataLoader worker processes per training process (default: 0 for "
            "in-memory data without augmentation, else up to 4).",
        ),
        click.option(
            "--no-augment",
            is_flag=True,
            help="Train without the dataset's standard augmentation (e.g. CIFAR-10 crop+flip).",
        ),
        click.option(
            "--resume",
            type=click.Path(),
            default=None,
            help="Continue the interrupted (or finished) run in this directory with its "
            "recorded model, data and settings, up to --epochs in all (default: its own).",
        ),
        click.option(
            "--tensorboard",
            is_flag=True,
            help="Also write TensorBoard event files under DIR/tensorboard (needs -o and the "
            "tensorboard package).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _milestones(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise BnnExportError(
            f"--milestones must be comma-separated whole epochs, got {value!r}",
            hint="e.g. --milestones 150,250,320",
        ) from None


def optimization_options(f: Any) -> Any:
    """``train``'s recipe, optimizer and schedule options (``TrainSettings`` fields;
    docs/recipes.md), and Larq's ``--devices``."""
    from bnn_export import lr_schedule, recipes

    options = [
        click.option(
            "--recipe",
            default=None,
            help="Start from an official implementation's CIFAR-10 settings (bnn-export list, "
            "docs/recipes.md); flags given explicitly override its values: "
            + ", ".join(recipes.names())
            + ".",
        ),
        click.option(
            "--optimizer",
            default="adam",
            show_default=True,
            type=click.Choice(lr_schedule.OPTIMIZERS),
            help="adam and sgd: coupled L2 weight decay; adamw: decoupled.",
        ),
        click.option(
            "--momentum", default=0.9, show_default=True, type=float, help="sgd momentum."
        ),
        click.option("--nesterov/--no-nesterov", default=False, help="sgd: Nesterov momentum."),
        click.option(
            "--schedule",
            default="cosine",
            show_default=True,
            type=click.Choice(lr_schedule.SCHEDULES),
            help="cosine: to 0 at the end; step: times --gamma at each of --milestones.",
        ),
        click.option(
            "--warmup-epochs",
            default=0,
            show_default=True,
            type=click.IntRange(min=0),
            help="Linear warm-up to --lr over this many epochs.",
        ),
        click.option(
            "--milestones",
            default=None,
            callback=_milestones,
            help="step schedule: comma-separated epochs at which the rate drops, e.g. 150,250.",
        ),
        click.option(
            "--gamma", default=0.1, show_default=True, type=float, help="step schedule factor."
        ),
        click.option(
            "--lr-interval",
            default="step",
            show_default=True,
            type=click.Choice(lr_schedule.LR_INTERVALS),
            help="Change the rate every optimizer step, or once per epoch.",
        ),
        click.option(
            "--devices",
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Larq: train on N devices with tf.distribute.MirroredStrategy (GPUs, else "
            "logical CPUs); --batch-size is the global batch.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


#: recipe keys -> the ``train`` parameters that set them
_RECIPE_PARAMS = {
    "model": "model_name",
    "binarizer": "binarizer",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "schedule": "schedule",
    "warmup_epochs": "warmup_epochs",
    "milestones": "milestones",
    "gamma": "gamma",
    "lr_interval": "lr_interval",
}


def _apply_recipe(ctx: click.Context, name: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``_RECIPE_PARAMS`` values of this ``train`` call, with the recipe's wherever the
    user gave no flag, and the recipe's binarizer parameters (docs/recipes.md)."""
    values = {key: ctx.params[param] for key, param in _RECIPE_PARAMS.items()}
    if name is None:
        return values, {}
    from bnn_export import recipes

    recipe = recipes.get(name)
    explicit = {key for key, param in _RECIPE_PARAMS.items() if _given(ctx, param)}
    if not _given(ctx, "dataset"):
        raise BnnExportError(
            f"recipe {name!r} trains on {recipe.dataset}, which is read from a directory",
            hint=f"add --dataset {recipe.dataset}:DIR (the folder of the python batches), "
            "or e.g. --dataset digits --model digits for a quick try",
        )
    return recipes.resolve(recipe, values, explicit)


@cli.command()
@click.option("--framework", default="torch", show_default=True, help="torch or larq.")
@click.option(
    "--model",
    "model_name",
    default="digits",
    show_default=True,
    help=f"Architecture: {', '.join(ARCHS)}.",
)
@click.option(
    "--dataset", default="digits", show_default=True, help="digits | cifar10:DIR | mnist:DIR."
)
@click.option(
    "--binarizer",
    default="ste",
    show_default=True,
    help=f"Weight binarizer: {', '.join(binarizer_registry.names())}.",
)
@click.option(
    "--bit-ratio",
    type=float,
    default=None,
    help="equal_bits: fraction p in (0, 1) of +1 weights per channel/layer.",
)
@click.option("--ot-granularity", default=None, help="equal_bits: channel (default) or layer.")
@click.option(
    "--prune-rate",
    type=float,
    default=None,
    help="equal_bits: fraction k in [0, 1) of middle-ranked weights set to 0.",
)
@click.option("--siman-code", default=None, help="siman: pm1 (default, exportable) or 01.")
@training_options
@click.option("--weight-decay", default=0.0, show_default=True, type=float)
@optimization_options
@click.option(
    "--input-size",
    type=click.IntRange(min=1),
    default=None,
    help="Square input side the model is built for (default: the model's own, e.g. 224 for "
    "birealnet18 / reactnet-a / quicknet); images are resized to it.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=2),
    default=None,
    help="Classifier outputs (default: the dataset's classes).",
)
@click.option(
    "--width",
    type=float,
    default=None,
    help="Channel multiplier for birealnet18, reactnet-a, quicknet (e.g. 0.25 for tests).",
)
@click.option(
    "--pad-value",
    default="1",
    show_default=True,
    type=click.Choice(["0", "1"]),
    help="Padding value of binary convs' binarized inputs (+1 is the cheap case for LCE).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    default=None,
    help="Run directory to write (checkpoint.safetensors, metrics.json).",
)
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(
    framework: str,
    model_name: str,
    dataset: str,
    binarizer: str,
    bit_ratio: float | None,
    ot_granularity: str | None,
    prune_rate: float | None,
    siman_code: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    num_threads: int | None,
    weight_decay: float,
    recipe: str | None,
    optimizer: str,
    momentum: float,
    nesterov: bool,
    schedule: str,
    warmup_epochs: int,
    milestones: tuple[int, ...],
    gamma: float,
    lr_interval: str,
    devices: int,
    input_size: int | None,
    num_classes: int | None,
    width: float | None,
    pad_value: str,
    output: str | None,
    device: str,
    precision: str,
    nproc: int | None,
    sync_bn: bool | None,
    workers: int | None,
    no_augment: bool,
    resume: str | None,
    tensorboard: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Train a BNN and write a run directory.

    PyTorch runs write DIR from the first finished epoch on (resume.pt, metrics.jsonl);
    a run that is stopped continues with --resume DIR. Data-parallel: --nproc N, or
    torchrun --nproc-per-node N -m bnn_export train ... (see docs/training.md)."""
    from bnn_export.datasets import load_dataset
    from bnn_export.lr_schedule import check_optimization
    from bnn_export.models import arch_spec
    from bnn_export.run import train_run
    from bnn_export.train_settings import TrainSettings

    ctx = click.get_current_context()
    if framework not in ("torch", "larq"):
        raise unknown_name("framework", framework, ("torch", "larq"))
    if framework == "larq":
        _refuse_torch_only_for_larq(ctx)
    if devices > 1 and framework != "larq":
        raise BnnExportError(
            "--devices sets the replicas of the Larq trainer's MirroredStrategy; the PyTorch "
            "trainer runs one process per device instead",
            hint="drop --devices; for PyTorch use `bnn-export train --nproc N` or torchrun",
        )
    if resume is None:  # a resumed run keeps its recorded settings
        resolved, recipe_params = _apply_recipe(ctx, recipe)
        model_name, binarizer = resolved.pop("model"), resolved.pop("binarizer")
        epochs, batch_size = resolved["epochs"], resolved["batch_size"]
    engine: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "sync_bn": sync_bn,
        "workers": workers,
        "augment": not no_augment,
        "tensorboard": tensorboard,
    }
    if nproc is not None and nproc > 1:
        _launch_data_parallel(ctx, nproc, batch_size, output or resume)
        return
    if resume is not None:
        _train_resumed(ctx, resume, output, epochs, engine, quiet=quiet, as_json=as_json)
        return
    if num_threads is not None and framework != "torch":
        raise BnnExportError(
            "--num-threads sets PyTorch's intra-op threads; the Larq trainer does not take it",
            hint="drop --num-threads, or set TF_NUM_INTRAOP_THREADS for TensorFlow",
        )
    if framework == "larq" and model_name in ARCHS and not ARCHS[model_name].larq:
        raise BnnExportError(
            f"model {model_name!r} is built in PyTorch only",
            hint="train it with --framework torch (Larq models: "
            + ", ".join(a for a, i in ARCHS.items() if i.larq)
            + ")",
        )
    config = binarizer_registry.get(
        binarizer,
        **{
            **recipe_params,
            **binarizer_params(
                bit_ratio=bit_ratio,
                granularity=ot_granularity,
                prune_rate=prune_rate,
                code=siman_code,
            ),
        },
    )
    data = load_dataset(dataset)
    arch = arch_spec(
        model_name,
        num_classes=_num_classes(num_classes, data.num_classes),
        input_shape=_input_shape(model_name, input_size),
        pad_value=float(pad_value),
        width=width,
    )
    check_ratio_before_training(arch, config)
    if output is not None:
        check_writable(output)
    settings = TrainSettings(
        **resolved,
        seed=seed,
        num_threads=num_threads,
        progress=not quiet and not as_json,
        devices=devices,
        recipe=recipe,
        **(engine if framework == "torch" else {}),
    )
    check_optimization(settings)
    metrics = train_run(
        framework=framework,
        arch=arch,
        binarizer=config,
        data=data,
        settings=settings,
        output=output,
    )
    _report_training(metrics, output, as_json)


def _report_training(metrics: dict[str, Any], output: str | None, as_json: bool) -> None:
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # data-parallel: rank 0 reports
    where = f" -> {output}" if output else ""
    _emit(
        metrics,
        as_json,
        f"{metrics['model']}/{metrics['binarizer']['name']}/{metrics['framework']} on "
        f"{metrics['dataset']}: test accuracy {metrics['test_accuracy']:.2%} after "
        f"{metrics['epochs']} epochs ({metrics['train_seconds']:.1f}s){where}",
    )


#: ``train`` options a resumed run may change; every other one must match the record
RESUME_MAY_CHANGE = (
    "epochs",
    "device",
    "precision",
    "workers",
    "num_threads",
    "tensorboard",
    "nproc",
    "resume",
    "output",
    "as_json",
    "quiet",
)
#: options only the PyTorch trainer takes (with their defaults)
TORCH_ONLY = (
    "device",
    "precision",
    "nproc",
    "sync_bn",
    "workers",
    "no_augment",
    "resume",
    "tensorboard",
)


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _option(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return name


def _refuse_torch_only_for_larq(ctx: click.Context) -> None:
    for name in TORCH_ONLY:
        if _given(ctx, name):
            raise BnnExportError(
                f"{_option(ctx, name)} is an option of the PyTorch trainer; the Larq "
                "trainer does not take it",
                hint=f"drop {_option(ctx, name)}, or train with --framework torch",
            )


def _launch_data_parallel(
    ctx: click.Context, nproc: int, batch_size: int, output: str | None
) -> None:
    """``--nproc N``: run this same command in N processes (rank 0 reports)."""
    import os

    from bnn_export import distributed as dd

    if dd.from_env().distributed:
        raise BnnExportError(
            f"--nproc inside an already data-parallel run (WORLD_SIZE={os.environ['WORLD_SIZE']})",
            hint="use either torchrun or --nproc, not both",
        )
    if batch_size % nproc and ctx.params.get("resume") is None:
        raise BnnExportError(
            f"--batch-size {batch_size} is not divisible by --nproc {nproc} (it is the "
            "global batch, split evenly across the processes)",
            hint=f"pass a --batch-size that is a multiple of {nproc}",
        )
    if output is not None:
        check_writable(output)
    root = ctx.find_root().obj or {}
    argv = root.get("argv")
    if argv is None:
        argv = sys.argv[1:]
    dd.launch(nproc, dd.strip_nproc(list(argv)), output)


def _train_resumed(
    ctx: click.Context,
    directory: str,
    output: str | None,
    epochs: int,
    engine: dict[str, Any],
    *,
    quiet: bool,
    as_json: bool,
) -> None:
    """``--resume DIR``: continue the run recorded in DIR, refusing contradicting options."""
    import dataclasses
    import os

    from bnn_export.datasets import load_dataset
    from bnn_export.resume import load_state
    from bnn_export.run import train_run
    from bnn_export.train_settings import TrainSettings

    if output is not None and os.path.abspath(output) != os.path.abspath(directory):
        raise BnnExportError(
            f"-o {output} differs from --resume {directory}; a resumed run writes into "
            "its own directory",
            hint="drop -o",
        )
    state = load_state(directory)
    run = state["run"]
    if run.get("framework") != "torch":
        raise BnnExportError(
            f"{directory!r} is not a PyTorch run; only PyTorch runs are resumable",
            hint="train it again",
        )
    recorded = dict(run["settings"])
    recorded_values = {
        "framework": run["framework"],
        "model_name": run["arch"]["name"],
        "dataset": run["dataset"],
        "binarizer": run["binarizer"]["name"],
        "no_augment": not recorded.get("augment", True),
        **recorded,
    }
    for name, value in ctx.params.items():
        if name in RESUME_MAY_CHANGE or not _given(ctx, name):
            continue
        have = recorded_values.get(name, _MISSING)
        same = have is not _MISSING and (
            list(value) == list(have)
            if isinstance(value, list | tuple) and isinstance(have, list | tuple)
            else value == have
        )
        if not same:
            was = "" if have is _MISSING else f" (it was trained with {have!r})"
            raise BnnExportError(
                f"{_option(ctx, name)} {value!r} contradicts the run in {directory}{was}",
                hint=f"drop {_option(ctx, name)}: --resume continues with the run's recorded "
                "model, data and settings (only --epochs, --device, --precision, --workers, "
                "--num-threads, --tensorboard and --nproc may change)",
            )
    done = int(state["epoch"])
    total = epochs if _given(ctx, "epochs") else int(recorded["epochs"])
    if total < done:
        raise BnnExportError(
            f"--epochs {total}: the run in {directory} has already trained {done} epochs",
            hint=f"pass --epochs {done + 1} or more to train further",
        )
    if total == done:
        raise BnnExportError(
            f"the run in {directory} has already finished its {done} epochs",
            hint=f"pass --epochs N (N > {done}) to train it further",
        )
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k: v for k, v in recorded.items() if k in fields and k != "progress"}
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    values.update(epochs=total, progress=not quiet and not as_json)
    values.update({k: engine[k] for k in ("device", "precision", "workers", "tensorboard")})
    if _given(ctx, "num_threads"):
        values["num_threads"] = ctx.params["num_threads"]
    settings = TrainSettings(**values)
    metrics = train_run(
        framework="torch",
        arch=run["arch"],
        binarizer=binarizer_registry.get(run["binarizer"]),
        data=load_dataset(run["dataset"]),
        settings=settings,
        output=directory,
        resume=state,
    )
    _report_training(metrics, directory, as_json)


_MISSING = object()


def _num_classes(asked: int | None, in_data: int) -> int:
    if asked is not None and asked < in_data:
        raise BnnExportError(
            f"--num-classes {asked} is fewer than the dataset's {in_data} classes",
            hint=f"drop --num-classes, or give at least {in_data}",
        )
    return asked or in_data


def _input_shape(model_name: str, size: int | None) -> tuple[int, int, int] | None:
    """The model's default channels at ``size`` x ``size`` (None: its default shape)."""
    if size is None:
        return None
    if model_name not in ARCHS:
        raise unknown_name("model", model_name, ARCHS)
    return (ARCHS[model_name].input_shape[0], size, size)


@cli.command()
@click.option("--model", "model_name", default="digits", show_default=True)
@click.option("--dataset", default="digits", show_default=True)
@click.option(
    "--binarizers", default="equal_bits", show_default=True, help="Comma-separated binarizer names."
)
@click.option(
    "--bit-ratios",
    default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    show_default=True,
    help="Comma-separated ratios p in (0, 1).",
)
@click.option("--ot-granularity", default="channel", show_default=True)
@training_options
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    required=True,
    help="Directory for sweep.json, sweep.md, sweep.png.",
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def sweep(
    model_name: str,
    dataset: str,
    binarizers: str,
    bit_ratios: str,
    ot_granularity: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    num_threads: int | None,
    output: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Train over bit ratios (and binarizers); write a table and a plot of accuracy vs p."""
    from bnn_export.binarizers import check_bit_ratio
    from bnn_export.datasets import load_dataset
    from bnn_export.models import arch_spec
    from bnn_export.sweep import markdown_table, run_sweep, write_sweep
    from bnn_export.train_settings import TrainSettings

    configs = [binarizer_registry.get(n.strip()) for n in binarizers.split(",") if n.strip()]
    if any(not c.binary for c in configs) or not configs:
        raise BnnExportError("--binarizers takes binary binarizers (not 'none')")
    try:
        ratios = [check_bit_ratio(float(v)) for v in bit_ratios.split(",")]
    except ValueError:
        raise BnnExportError(
            f"--bit-ratios must be comma-separated numbers, got {bit_ratios!r}"
        ) from None
    binarizer_registry.get("equal_bits", granularity=ot_granularity)  # validates the name
    data = load_dataset(dataset)
    arch = arch_spec(model_name, num_classes=data.num_classes)
    check_ratio_before_training(
        arch, binarizer_registry.get("equal_bits", granularity=ot_granularity), ratios
    )
    check_writable(output)
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        num_threads=num_threads,
        progress=False,
    )
    rows = run_sweep(
        arch=arch,
        data=data,
        binarizers=configs,
        ratios=ratios,
        granularity=ot_granularity,
        settings=settings,
        progress=not quiet and not as_json,
    )
    title = f"{model_name} on {data.spec}, {epochs} epochs, OT granularity {ot_granularity}"
    meta = {
        "model": model_name,
        "dataset": data.spec,
        "epochs": epochs,
        "lr": lr,
        "seed": seed,
        "granularity": ot_granularity,
        "bnn_export_version": __version__,
    }
    write_sweep(rows, output, title, meta)
    _emit(
        {"meta": meta, "rows": rows},
        as_json,
        markdown_table(rows, title) + f"\nwritten to {output}/",
    )


def check_ratio_before_training(
    arch: dict[str, Any],
    config: binarizer_registry.BinarizerConfig,
    ratios: list[float] | None = None,
) -> None:
    """Refuse a bit ratio some binary layer of ``arch`` cannot meet, before any training
    (``convert --bit-ratio`` would refuse the trained model). ``ratios``: the ratios a
    sweep will fix; default: the binarizer's own ``bit_ratio`` (Equal Bits, no pruning)."""
    params = config.params
    if ratios is None:
        if "bit_ratio" not in params or params.get("prune_rate", 0.0) > 0:
            return
        ratios = [params["bit_ratio"]]
    from bnn_export.bitratio import check_model_ratio_meetable
    from bnn_export.models.torch_build import build_torch_model

    # layer shapes and torch module names (the larq model has the same layers)
    model = build_torch_model(arch, config)
    for p in ratios:
        check_model_ratio_meetable(model, p, params.get("granularity", "channel"))


def binarizer_params(**given: Any) -> dict[str, Any]:
    """CLI binarizer options that were given (None = not given)."""
    return {k: v for k, v in given.items() if v is not None}


@cli.command()
@click.argument("source", type=click.Path())
@click.option("--format", "fmt", required=True, help="tflite (LCE) or onnx.")
@click.option("-o", "--output", type=click.Path(), required=True, help="Output file.")
@click.option(
    "--target",
    default=None,
    help="onnx only: onnxruntime (default; our BinaryConv2d op), openvino, or reference.",
)
@click.option(
    "--bit-ratio",
    type=float,
    default=None,
    help="Fix every binary layer to this ratio of +1 weights by OT sorting first "
    "(PyTorch and Larq checkpoints).",
)
@click.option(
    "--ot-granularity", default=None, help="With --bit-ratio: channel (default) or layer."
)
@click.option(
    "--recalibrate-bn/--no-recalibrate-bn",
    default=None,
    help="With --bit-ratio: re-estimate batch-norm statistics on the training split "
    "after fixing (default: yes).",
)
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Run the artifact on the test split and compare with the source model.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset for validation and batch-norm re-estimation (default: the checkpoint's).",
)
@click.option("--json", "as_json", is_flag=True)
def convert(
    source: str,
    fmt: str,
    output: str,
    target: str | None,
    bit_ratio: float | None,
    ot_granularity: str | None,
    recalibrate_bn: bool | None,
    validate: bool,
    dataset: str | None,
    as_json: bool,
) -> None:
    """Convert a trained run (directory or checkpoint) to .tflite (LCE) or .onnx."""
    from bnn_export.convert_cli import run_convert

    result = run_convert(
        source,
        fmt=fmt,
        output=output,
        target=target,
        bit_ratio=bit_ratio,
        granularity=ot_granularity,
        recalibrate_bn=recalibrate_bn,
        validate=validate,
        dataset=dataset,
        progress=not as_json,
    )
    _emit(result, as_json, result["summary"])


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option(
    "--device",
    default="local",
    show_default=True,
    help="local | ssh://user@host[:port] | adb | adb:SERIAL.",
)
@click.option(
    "--runtime",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "lce", "onnxruntime", "openvino", "torch"]),
    help="auto: lce for .tflite, onnxruntime/openvino by the .onnx target, torch for checkpoints.",
)
@click.option("--num-threads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--num-runs",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Minimum number of timed runs.",
)
@click.option("--warmup-runs", default=1, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--min-secs",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Minimum time of the timed runs (seconds).",
)
@click.option(
    "--dataset",
    default=None,
    help="Accuracy on this dataset's test split (default: the one the model records).",
)
@click.option(
    "--max-eval",
    default=None,
    type=click.IntRange(min=1),
    help="Score only the first N test images.",
)
@click.option(
    "--reference",
    default=None,
    type=click.Path(),
    help="Run dir / checkpoint whose predictions the models are compared with.",
)
@click.option(
    "--min-agreement",
    default=None,
    type=click.FloatRange(0, 1),
    help="Exit with an error (after writing the report) if a model's top-1 agreement with "
    "--reference is below this fraction, e.g. 0.995.",
)
@click.option("--json", "json_out", default=None, type=click.Path(), help="Write the JSON report.")
@click.option(
    "--report",
    "report_dir",
    default=None,
    type=click.Path(),
    help="Write bench.json, bench.md and bench.png into DIR.",
)
@click.option(
    "--timeout",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a command on the device may take (default 600).",
)
@click.option(
    "--lce-benchmark-binary",
    default=None,
    help="lce_benchmark_model: path on the device (adb: a local file is pushed).",
)
@click.option("--taskset", default=None, help="CPU mask to pin lce_benchmark_model, e.g. f0.")
@click.option(
    "--emulator",
    default=None,
    help="Run lce_benchmark_model, or the .onnx worker over ssh, under this emulator "
    "(e.g. qemu-aarch64-static, or 'qemu-aarch64-static -L ROOTFS' with --remote-python "
    "ROOTFS/.../python); results are marked emulated, never ARM latency.",
)
@click.option(
    "--remote-python",
    default=None,
    help="Python with bnn-export on an ssh device (runs the .onnx worker; default python3).",
)
@click.option("--remote-tmp", default=None, help="Directory for temp files on the device.")
@click.option("--ssh-identity", default=None, type=click.Path(), help="ssh private key file.")
@click.option(
    "--ssh-known-hosts",
    default=None,
    type=click.Path(),
    help="known_hosts file (host keys are then checked strictly).",
)
@click.option("--ssh-config", default=None, type=click.Path(), help="ssh config file (ssh -F).")
@click.option("--ssh-option", "ssh_options", multiple=True, help="Extra ssh -o Key=Value.")
@click.option("--json-stdout", "as_json", is_flag=True, help="Print the JSON report on stdout.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(
    models: tuple[str, ...],
    device: str,
    runtime: str,
    num_threads: int,
    num_runs: int,
    warmup_runs: int,
    min_secs: float,
    dataset: str | None,
    max_eval: int | None,
    reference: str | None,
    min_agreement: float | None,
    json_out: str | None,
    report_dir: str | None,
    timeout: float | None,
    lce_benchmark_binary: str | None,
    taskset: str | None,
    emulator: str | None,
    remote_python: str | None,
    remote_tmp: str | None,
    ssh_identity: str | None,
    ssh_known_hosts: str | None,
    ssh_config: str | None,
    ssh_options: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure latency and accuracy of .tflite/.onnx files and checkpoints, here or on a device."""
    from bnn_export.bench.latency import LatencySettings
    from bnn_export.bench_cli import BenchOptions, check_agreement, run_bench

    if min_agreement is not None and reference is None:
        raise BnnExportError(
            "--min-agreement compares the models with --reference, and none was given",
            hint="add --reference RUN_DIR (the checkpoint the models were converted from)",
        )
    options = BenchOptions(
        device=device,
        runtime=runtime,
        num_threads=num_threads,
        latency=LatencySettings(num_runs=num_runs, warmup_runs=warmup_runs, min_secs=min_secs),
        dataset=dataset,
        reference=reference,
        max_eval=max_eval,
        timeout=timeout,
        lce_benchmark_binary=lce_benchmark_binary,
        taskset=taskset,
        emulator=emulator,
        remote_python=remote_python,
        remote_tmp=remote_tmp,
        ssh_identity=ssh_identity,
        ssh_known_hosts=ssh_known_hosts,
        ssh_config=ssh_config,
        ssh_options=ssh_options,
    )
    result = run_bench(
        list(models),
        options,
        json_out=json_out,
        report_dir=report_dir,
        progress=not quiet and not as_json,
    )
    text = result["table"] + "".join(f"\nwrote {path}" for path in result["written"])
    _emit(result["report"], as_json, text)
    check_agreement(result["report"], min_agreement)


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
def inspect(artifact: str, as_json: bool) -> None:
    """Show the ops, parameters and metadata of a .tflite or .onnx file."""
    from bnn_export.inspect_artifact import format_report, inspect_file

    info = inspect_file(artifact)
    _emit(info, as_json, format_report(info))


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True)
def list_names(as_json: bool) -> None:
    """List models, binarizers, datasets and training recipes."""
    from bnn_export import recipes

    result = {
        "models": {a.name: a.summary for a in ARCHS.values()},
        "binarizers": {b.name: b.summary for b in binarizer_registry.REGISTRY.values()},
        "datasets": DATASETS,
        "recipes": {r.name: r.summary for r in recipes.RECIPES.values()},
    }
    lines = []
    for section, entries in result.items():
        lines.append(f"{section}:")
        width = max(12, *(len(k) for k in entries))
        lines.extend(f"  {k:<{width}} {v}" for k, v in entries.items())
    _emit(result, as_json, "\n".join(lines))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup path (temp files, child processes) runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _interrupted_detail(exc: BaseException) -> str:
    """What the interrupted command left behind (a training run says: resumable or not)."""
    return str(getattr(exc, "bnn_export_detail", "no output was written"))


def _launched() -> bool:
    """A worker of ``train --nproc``: its launcher reports interruptions and failures."""
    import os

    return os.environ.get("BNN_EXPORT_LAUNCHED") == "1" and "RANK" in os.environ


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        # not cli.main(): it turns Ctrl-C into click's Abort after printing a blank line
        with cli.make_context("bnn-export", args, obj={"argv": args}) as ctx:
            cli.invoke(ctx)
    except BnnExportError as exc:
        if debug:
            traceback.print_exc()
        if not (getattr(exc, "consequential", False) and _launched()):
            click.echo(f"error: {exc}", err=True)
        return EXIT_USER_ERROR
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Terminated as exc:
        if not _launched():
            click.echo(f"error: terminated (SIGTERM); {_interrupted_detail(exc)}", err=True)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None)  # set by `train --nproc`'s launcher
        what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        if not _launched():
            click.echo(f"error: {what}; {_interrupted_detail(exc)}", err=True)
        return 128 + int(signum) if signum else EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
