"""``maml-tune predict``: adapt an image-family checkpoint to a support folder, classify queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from maml_tune.cli._common import (
    QUERY_NORM_TEXT,
    DeviceOption,
    JsonOption,
    QueryNorm,
    out,
    print_json,
    query_norm_option,
    registry,
)
from maml_tune.errors import ConfigError, DataError, MamlTuneError, PluginError


def _image_suffixes() -> tuple[str, ...]:
    # Imported here, not at the top: the families import torch, and --help must not.
    from maml_tune.families.imagefolder import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    suffixes = _image_suffixes()
    return sorted(
        p for p in folder.glob(pattern)
        if p.is_file() and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_support_folder(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    """``folder/<class>/<image>`` → (class names sorted, image files, label of each file)."""
    if not folder.is_dir():
        raise DataError(f"support folder {folder} does not exist or is not a folder")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"support folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = _images_in(class_dir, recursive=False)
        if not found:
            raise DataError(f"class folder {class_dir} has no images ({', '.join(_image_suffixes())})")
        files += found
        labels += [label] * len(found)
    return [p.name for p in class_dirs], files, labels


def _preprocess(family: Any, files: list[Path], input_shape: tuple[int, ...]):
    import torch

    try:
        x = family.preprocess([str(f) for f in files])
    except MamlTuneError:
        raise
    except Exception as exc:
        raise PluginError(
            f"task family {family.name!r}: preprocess() raised {type(exc).__name__}: {exc}"
        ) from exc
    x = torch.as_tensor(x, dtype=torch.float32)
    if tuple(x.shape) != (len(files), *input_shape):
        raise PluginError(
            f"task family {family.name!r}: preprocess() returned shape {tuple(x.shape)}, "
            f"expected {(len(files), *input_shape)}"
        )
    return x


def predict(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint directory of an image classification family.")
    ],
    support: Annotated[
        Path,
        typer.Option(
            "--support",
            help="Support folder: one sub-folder of images per class, any number of images "
            "(any number of classes >= 2 with an arch.head zero or shared checkpoint).",
        ),
    ],
    query: Annotated[Path, typer.Option("--query", help="Folder of query images (searched recursively).")],
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=0, help="Inner steps (default: the config's test-time steps)."),
    ] = None,
    query_norm: Annotated[QueryNorm, query_norm_option("support")] = QueryNorm.support,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    """Adapt a checkpoint to a labelled support folder and print the predicted class of every query image."""
    import torch

    from maml_tune.core.api import load_learner

    learner = load_learner(checkpoint, device)
    config = learner.config
    if learner.kind != "classification" or len(learner.input_shape) != 3:
        raise ConfigError(
            f"predict needs a checkpoint of an image classification family; {checkpoint} is "
            f"{learner.kind} on inputs of shape {learner.input_shape} (family {config.family!r})"
        )
    family = registry(ctx).family_of(config)
    if not family.reads_images():
        raise ConfigError(
            f"task family {config.family!r} has no preprocess(images) method, so it cannot read image files"
        )
    classes, support_files, labels = read_support_folder(support)
    n_way = learner.output_size
    if len(classes) != n_way and not learner.any_way:
        raise ConfigError(
            f"the support folder {support} has {len(classes)} classes ({', '.join(classes)}) but "
            f"the checkpoint's head is fixed at {n_way} classes (arch.head = fixed): give exactly "
            f"{n_way} class sub-folders, or meta-train with arch.head = zero or shared for any number"
        )
    if len(classes) < 2:
        raise DataError(f"the support folder {support} has 1 class ({classes[0]}): give at least 2")
    if not query.exists():
        raise DataError(f"query folder {query} does not exist")
    query_files = [query] if query.is_file() else _images_in(query, recursive=True)
    if not query_files:
        raise DataError(f"query folder {query} has no images ({', '.join(_image_suffixes())})")

    support_x = _preprocess(family, support_files, learner.input_shape).to(learner.device)
    query_x = _preprocess(family, query_files, learner.input_shape).to(learner.device)
    adapted = learner.adapt(support_x, torch.tensor(labels, dtype=torch.long), steps, n_way=len(classes))
    scores = torch.softmax(adapted.predict(query_x, query_norm.value), dim=-1).cpu()
    results = []
    for file, row in zip(query_files, scores, strict=True):
        name = str(file.relative_to(query)) if query.is_dir() else file.name
        results.append(
            {
                "file": name,
                "predicted": classes[int(row.argmax())],
                "scores": {c: round(float(s), 6) for c, s in zip(classes, row, strict=True)},
            }
        )
    if as_json:
        print_json(results)
        return
    used = config.algo.eval_inner_steps if steps is None else steps
    table = Table(
        title=Text(
            f"{config.family}: predictions after {used} inner steps on {len(support_files)} support images"
        ),
        caption=f"query images {QUERY_NORM_TEXT[query_norm.value]}",
    )
    table.add_column("file", overflow="fold")
    table.add_column("predicted")
    table.add_column("score", justify="right")
    for row in results:
        # File and class names are the user's: never markup.
        table.add_row(Text(row["file"]), Text(row["predicted"]), f"{row['scores'][row['predicted']]:.3f}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
