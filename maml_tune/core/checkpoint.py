"""Checkpoints: weights in safetensors (no pickle) plus the full run config and what the run
measured (:class:`~maml_tune.core.run.RunSummary`) as JSON.

A checkpoint directory holds ``weights.safetensors`` and ``checkpoint.json``; the JSON
records the SHA-256 of the weights and of itself, so a corrupt or edited file is refused. Each file
is written under a temporary name and renamed into place, so a crash never leaves a
half-written checkpoint that could be loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from maml_tune.core.config import RunConfig
from maml_tune.core.learner import MetaLearner
from maml_tune.core.run import RunSummary
from maml_tune.errors import CheckpointError, MamlTuneError

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1
META_HASH = "meta_sha256"
MAX_META_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the learner (on the requested device), its config and run summary."""

    learner: MetaLearner
    config: RunConfig
    input_shape: tuple[int, ...]
    output_size: int
    kind: str
    summary: RunSummary | None = None
    """``None`` when saved without one, or by a release before summaries (its ``metadata`` is not read)."""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    directory: str | os.PathLike, learner: MetaLearner, config: RunConfig,
    summary: RunSummary | None = None,
) -> Path:
    """Write ``learner``'s meta-parameters, ``config`` and ``summary`` to ``directory`` (created
    if needed)."""
    directory = Path(directory)
    state = {name: t.detach().to("cpu").contiguous() for name, t in learner.state_dict().items()}
    blob = save_safetensors(state)
    meta = {
        "format": FORMAT_VERSION,
        "config": config.to_dict(),
        "input_shape": list(learner.input_shape),
        "output_size": learner.output_size,
        "kind": learner.kind,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
    }
    if summary is not None:
        meta["summary"] = summary.to_dict()
    meta[META_HASH] = _meta_digest(meta)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / WEIGHTS_FILE, blob)
        _atomic_write(directory / META_FILE, json.dumps(meta, indent=2).encode())
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint to {directory}: {exc.strerror or exc}") from exc
    return directory


def _meta_digest(meta: dict) -> str:
    """SHA-256 of ``meta`` without its own hash, in a canonical JSON form."""
    body = {k: v for k, v in meta.items() if k != META_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint written by :func:`save_checkpoint`; never unpickles.

    Both files are verified: the weights against ``weights_sha256`` and the JSON itself
    against ``meta_sha256`` (checkpoints written before it have only the first)."""
    directory = Path(directory)
    try:
        meta_path = directory / META_FILE
        if meta_path.is_file() and meta_path.stat().st_size > MAX_META_BYTES:
            raise CheckpointError(f"{meta_path} is larger than a checkpoint's metadata can be")
        meta = json.loads(meta_path.read_text())
        blob = (directory / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"{directory} is not a checkpoint: missing {Path(exc.filename).name} "
            f"(expected {META_FILE} and {WEIGHTS_FILE})"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {directory}: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{directory / META_FILE}: nested too deeply to be a checkpoint") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{directory / META_FILE}: unsupported checkpoint format")
    if META_HASH in meta and meta[META_HASH] != _meta_digest(meta):
        raise CheckpointError(
            f"{directory / META_FILE} does not match its recorded hash: the checkpoint was modified"
        )
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not match the hash recorded in {META_FILE}: "
            "the checkpoint is corrupt or was modified"
        )
    try:
        config = RunConfig.from_dict(meta["config"])
        input_shape, output_size, kind = tuple(meta["input_shape"]), meta["output_size"], meta["kind"]
        state = load_safetensors(blob)
        learner = MetaLearner(config.arch, config.algo, input_shape, output_size, kind)
        learner.load_state_dict(state)
        summary = RunSummary.from_dict(meta["summary"]) if "summary" in meta else None
    except (KeyError, TypeError, RuntimeError, SafetensorError, MamlTuneError) as exc:
        raise CheckpointError(f"checkpoint {directory} is invalid: {exc}") from None
    return Checkpoint(learner.to(device), config, input_shape, output_size, kind, summary)
