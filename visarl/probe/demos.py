"""Expert demonstrations on disk: recorded once into HDF5 shards, derived fields (saliency, embeddings) added once.

A demo directory holds shards written by :class:`~visarl.data.shards.ShardWriter` (prefix ``demo``) and a manifest
``demos.json`` written last: the recording's spec (task, camera, image size, episode length, seed, number of
demos), the expert's success per demo, and the provenance of every derived field. A directory without the manifest
is an interrupted recording: its demo shards are discarded and recorded again (a recording takes seconds).

Derived fields go into the same shards with :func:`~visarl.data.shards.write_field` (atomic per shard): a saliency
map per frame under ``saliency`` and a frozen encoder's embedding under its key (``emb_<digest>``). A field already
present is never computed again, so a resumed probe, or a second probe of the same encoder, encodes no frame twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visarl.config import ConfigError
from visarl.core.io import atomic_write_json
from visarl.core.progress import progress as progress_bar
from visarl.data.shards import ShardReader, ShardWriter, list_shards, write_field

MANIFEST = "demos.json"
PREFIX = "demo"


@dataclass(frozen=True)
class DemoSet:
    """What a demo directory must hold to be reused."""

    task: str
    num_demos: int
    seed: int
    env: dict[str, Any]
    """The env's keyword arguments (``visarl.envs.env_kwargs``)."""
    end_on_success: bool = True
    """Each demo ends at the expert's first successful step."""
    noise: float = 0.0
    """Std of Gaussian noise added to the executed actions (DART, Laskey et al. 2017): the demos then visit states
    around the expert's path, each labelled with the expert's clean action (``expert_action``); 0: pure expert."""


def demo_seed(seed: int, index: int | str) -> int:
    """Seed of demo ``index`` (or of a named stream): its own SeedSequence stream, far from the evaluation's."""
    tag = index if isinstance(index, str) else f"demo-{index}"
    words = [seed % (1 << 63), int.from_bytes(hashlib.sha1(f"probe-{tag}".encode()).digest()[:4], "little")]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(directory / MANIFEST, manifest)


def record_demos(
    directory: str | Path, spec: DemoSet, attrs: dict[str, Any] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Record ``spec.num_demos`` scripted-expert episodes into ``directory`` (or reuse a matching recording).

    Returns the manifest. A directory whose manifest describes another recording is a :class:`ConfigError`
    naming the difference; demo shards without a manifest (an interrupted recording) are replaced.
    """
    from visarl.envs import MetaWorldPixelEnv  # lazy: importing it loads MuJoCo and picks its GL backend
    from visarl.envs.experts import ScriptedExpert

    directory = Path(directory)
    manifest = read_manifest(directory)
    wanted = asdict(spec)
    if manifest is not None:
        diff = {k: (manifest["spec"].get(k), v) for k, v in wanted.items() if manifest["spec"].get(k) != v}
        if diff:
            raise ConfigError(
                f"demo_dir {directory} holds another recording ({MANIFEST}: "
                + ", ".join(f"{k}={a!r}, wanted {b!r}" for k, (a, b) in diff.items())
                + "); choose another demo_dir"
            )
        return manifest
    for path in directory.glob(f"{PREFIX}-w*.h5") if directory.is_dir() else []:
        path.unlink()  # an interrupted recording: start over
    others = list_shards(directory, strict=False)
    if others:
        raise ConfigError(f"demo_dir {directory} holds other shards ({others[0].name}, ...); choose an empty folder")

    t0 = time.perf_counter()
    env = MetaWorldPixelEnv(**spec.env)
    rng = np.random.default_rng(demo_seed(spec.seed, "noise"))
    expert = ScriptedExpert(spec.task)
    writer = ShardWriter(directory, rows_per_shard=4096, attrs=attrs or {}, prefix=PREFIX)
    successes, lengths = [], []
    try:
        bar = progress_bar(spec.num_demos, f"demos {spec.task}", "demo", progress)
        for i in range(spec.num_demos):
            obs, _ = env.reset(seed=demo_seed(spec.seed, i))
            obs["expert_action"] = expert(obs["state"])
            writer.add_first(0, obs)
            success, steps = False, 0
            while steps < env.episode_length:
                steps += 1
                action = obs["expert_action"]
                if spec.noise > 0:
                    action = np.clip(action + rng.normal(0.0, spec.noise, action.shape), -1, 1).astype(np.float32)
                obs, reward, terminated, truncated, info = env.step(action)
                obs["expert_action"] = expert(obs["state"])  # the label of this frame
                success = success or info["success"] > 0
                end = spec.end_on_success and info["success"] > 0
                writer.add_step(0, action, reward, terminated, truncated or end, info["success"], obs)
                if terminated or truncated or end:
                    break
            successes.append(float(success))
            lengths.append(steps)
            bar.set_postfix(success=f"{np.mean(successes):.2f}", refresh=False)
            bar.update(1)
        bar.close()
        writer.close()
    finally:
        env.close()
    manifest = {
        "spec": wanted,
        "expert_success": float(np.mean(successes)),
        "successes": successes,
        "lengths": lengths,
        "frames": int(sum(lengths) + len(lengths)),
        "seconds": round(time.perf_counter() - t0, 2),
        "fields": {},
    }
    _write_manifest(directory, manifest)
    return manifest


def add_field(
    directory: str | Path,
    name: str,
    inputs: Sequence[str],
    compute: Callable[[dict[str, np.ndarray]], np.ndarray],
    provenance: str,
) -> int:
    """Add field ``name`` = ``compute({input: rows})`` to every demo shard lacking it; returns the rows computed.

    ``provenance`` (e.g. which saliency source or encoder) is recorded in the manifest; a field already made by
    something else is a :class:`ConfigError` (its rows would silently mean another thing).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ConfigError(f"{directory}: no {MANIFEST}; record the demos first")
    known = manifest["fields"].get(name)
    if known is not None and known != provenance:
        raise ConfigError(
            f"demo_dir {directory}: field {name!r} was made by {known!r}, not {provenance!r}; choose another demo_dir"
        )
    computed = 0
    for path in list_shards(directory):
        reader = ShardReader(path)
        if name in reader.fields:
            continue
        rows = reader.load(inputs)
        reader.close()
        write_field(path, name, compute(rows))
        computed += len(rows[inputs[0]])
    if known is None:
        manifest["fields"][name] = provenance
        _write_manifest(directory, manifest)
    return computed


def load_demos(directory: str | Path, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Observations ``keys`` and the expert's action at every demo row that has one: ({key: [N, ...]}, [N, A]).

    The label is ``expert_action``, the scripted policy's action at the frame (equal to the executed ``action``
    unless the demos were recorded with noise).
    """
    obs: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    actions = []
    shards = list_shards(directory)
    if not shards:
        raise ConfigError(f"demo_dir {directory}: no demo shards")
    for path in shards:
        reader = ShardReader(path)
        rows = reader.transition_indices()  # rows whose action the expert took
        for k in keys:
            obs[k].append(reader.read(k, rows))
        actions.append(reader.read("expert_action", rows))
        reader.close()
    return {k: np.concatenate(v) for k, v in obs.items()}, np.concatenate(actions)
