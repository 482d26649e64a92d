"""`stage: probe`: few-shot behaviour cloning from a scripted expert, a cheap test of a representation.

    python -m visarl.fit --config conf/probe/reach.yaml encoder=state
    python -m visarl.fit --config conf/probe/reach.yaml encoder=mmae encoder_ckpt=<encoder.pt> modalities=[rgb]
    python -m visarl.fit --resume runs/reach/<run>

Steps: record ``demos`` episodes of Meta-World's scripted expert into shards (``demo_dir``, default
<run_dir>/demos); add a saliency map per frame when the encoder reads one (PiCANet or the oracle, as in rl); for a
frozen MultiMAE, encode every demo frame once and store the embedding; train a BatchNorm + MLP policy by MSE on the
expert's actions for ``bc.steps`` steps; every ``eval.every`` steps (and at the end) measure success over
``eval.episodes`` episodes. ``probe.json`` holds every evaluation, the best and the final one; TensorBoard the
curves. A killed probe resumes from ``checkpoints/last.ckpt`` with ``--resume``.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visarl.config import ConfigError, RunConfig, choice, to_yaml
from visarl.core.log import get_logger
from visarl.data.shards import producer_attrs
from visarl.envs import CAMERAS, STATE_DIM, EnvConfig, MetaWorldPixelEnv, env_kwargs, resolve_task
from visarl.probe.demos import DemoSet, add_field, load_demos, record_demos
from visarl.probe.policy import BCPolicy
from visarl.registry import RunContext, register_stage
from visarl.rl.encoders import PIXEL_VARIANTS, IdentityEncoder, make_encoder
from visarl.rl.saliency_source import SALIENCY_SOURCES, labeller, make_saliency_source
from visarl.rl.stage import RolloutEvalConfig

log = get_logger(__name__)

PROBE_ENCODERS = ("state", "cnn", "mmae")


@dataclass
class BCConfig:
    """The behaviour-cloning policy and its optimisation (R3M / CortexBench: BatchNorm, MLP of 256, MSE)."""

    hidden_dim: int = 256
    """Hidden units per MLP layer."""
    num_layers: int = 2
    """Hidden layers of the MLP (R3M and CortexBench: 2-3)."""
    input_norm: bool = True
    """BatchNorm1d on the policy's input features."""
    norm_eps: float = 0.1
    """BatchNorm's variance floor (torch's default 1e-5 blows up near-constant state features: state probe on reach,
    50 episodes: about 0.70 success at 1e-5, 0.82-0.94 at 1e-2, 0.90-0.96 at 0.1 with the cosine decay)."""
    lr_schedule: str = "cosine"
    """'cosine' decays the learning rate to 0 over ``steps``; 'constant' keeps it."""
    lr: float = 1e-3
    """AdamW learning rate (policy, and the CNN when ``encoder: cnn``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_size: int = 256
    """Demo rows per step, drawn at random."""
    steps: int = 2000
    """Optimizer steps (with the cosine decay, 4000 overfit 25 reach demos: state probe 0.90-0.92 vs 0.92-0.96)."""

    def __post_init__(self) -> None:
        for key in ("hidden_dim", "num_layers", "batch_size", "steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"bc.{key}: must be >= 1, got {getattr(self, key)}")
        choice("bc.lr_schedule", self.lr_schedule, ["constant", "cosine"])
        if self.norm_eps <= 0:
            raise ConfigError(f"bc.norm_eps: must be > 0, got {self.norm_eps}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"bc.lr must be > 0 and bc.weight_decay >= 0 (got {self.lr}, {self.weight_decay})")


@dataclass
class ProbeEvalConfig(RolloutEvalConfig):
    """Evaluation: success over ``episodes`` episodes (success at any step, as in rl), deterministic policy."""

    every: int = 1000
    """Optimizer steps between evaluations; the last step is always evaluated. Rollouts dominate the probe's cost."""
    async_envs: bool = False
    """Run each evaluation env in its own worker process (pays a start-up; helps with spare cores)."""


@dataclass
class ProbeConfig(RunConfig):
    """``stage: probe``: clone the task's scripted expert from an encoder's features; success over 50 episodes."""

    stage: str = "probe"
    env: EnvConfig = field(default_factory=lambda: EnvConfig(episode_length=200))
    """The pixel env of demos and evaluation (probe episodes: 200 steps, twice the slowest expert of the four tasks)."""
    encoder: str = "state"
    """state (the 39-d state: the sanity row), cnn (the paper's CNN, trained by the BC loss) or mmae (frozen)."""
    variant: str = "rgb"
    """Encoder input: rgb, saliency, rgb_x_saliency or rgbs (cnn); rgb, saliency or rgbs (mmae)."""
    encoder_ckpt: str = ""
    """MultiMAE checkpoint (from the pretrain stage) for ``encoder: mmae``."""
    modalities: list[str] = field(default_factory=list)
    """MultiMAE inputs; empty = the variant's. A rgb+saliency checkpoint with [rgb] is the 'pretrain-only' row."""
    pooling: str = "mean"
    """MultiMAE feature: mean of the token embeddings (paper) or the global token."""
    cnn_layers: int = 11
    """Conv layers of the CNN (Appendix F: 11)."""
    cnn_filters: int = 32
    """Filters per conv layer (Appendix F: 32)."""
    saliency: str = "none"
    """Saliency maps of demo and evaluation frames: none, oracle (keypoints from the state), picanet."""
    saliency_ckpt: str = ""
    """PiCANet checkpoint for ``saliency: picanet``."""
    saliency_sigma: float = 10.0
    """Oracle blob sigma in pixels of a 400 px frame (as in rl)."""
    demos: int = 25
    """Expert demonstrations (R3M and CortexBench: 25)."""
    demo_noise: float = 0.0
    """Std of Gaussian noise on the demos' executed actions (DART); every frame is still labelled with the expert's
    clean action. 0 records the expert itself."""
    demo_dir: str = ""
    """Where the demo shards go; default <run_dir>/demos. Probes of one task and seed may share a folder: each
    derived field (saliency, an encoder's embeddings) is computed once and reused."""
    end_on_success: bool = True
    """End demos and evaluation episodes at their first success (changes no success rate; saves rollout time)."""
    bc: BCConfig = field(default_factory=BCConfig)
    """Policy and optimisation."""
    eval: ProbeEvalConfig = field(default_factory=ProbeEvalConfig)
    """Evaluation schedule."""
    checkpoint_every: int = 1000
    """Optimizer steps between checkpoints (<run_dir>/checkpoints/last.ckpt)."""
    torch_threads: int = 0
    """Intra-op threads of torch during the probe; 0 keeps torch's default."""

    def __post_init__(self) -> None:
        choice("encoder", self.encoder, PROBE_ENCODERS)
        choice("saliency", self.saliency, SALIENCY_SOURCES)
        choice("env.camera", self.env.camera, CAMERAS)
        if self.encoder == "cnn":
            choice("variant", self.variant, list(PIXEL_VARIANTS))
        elif self.encoder == "mmae":
            choice("variant", self.variant, ["rgb", "saliency", "rgbs"])
            if not self.encoder_ckpt:
                raise ConfigError("encoder: mmae needs encoder_ckpt: <MultiMAE checkpoint from the pretrain stage>")
            bad = [m for m in self.modalities if m not in PIXEL_VARIANTS[self.variant].obs_keys]
            if bad:
                raise ConfigError(f"modalities: {bad} are not inputs of variant {self.variant!r}")
            choice("pooling", self.pooling, ["mean", "global"])
        if self.saliency == "picanet" and not self.saliency_ckpt:
            raise ConfigError("saliency: picanet needs saliency_ckpt: <path to a trained PiCANet checkpoint>")
        if self.saliency == "oracle" and self.env.camera in ("behindGripper", "gripperPOV"):
            raise ConfigError(f"saliency: oracle needs a world-fixed env.camera, not {self.env.camera!r}")
        if self.needs_saliency and self.saliency == "none":
            raise ConfigError(
                f"variant: {self.variant!r} reads saliency maps, but saliency: none; "
                "set saliency: oracle, or saliency: picanet with saliency_ckpt: <checkpoint>"
            )
        if self.demos < 1 or self.checkpoint_every < 1 or self.torch_threads < 0 or self.demo_noise < 0:
            raise ConfigError("demos and checkpoint_every must be >= 1, torch_threads and demo_noise >= 0")
        if self.cnn_layers < 1 or self.cnn_filters < 1:
            raise ConfigError("cnn_layers and cnn_filters must be >= 1")

    @property
    def inputs(self) -> tuple[str, ...]:
        """Env observation keys the policy depends on (through its encoder)."""
        if self.encoder == "state":
            return ("state",)
        if self.encoder == "mmae" and self.modalities:
            return tuple(self.modalities)
        return PIXEL_VARIANTS[self.variant].obs_keys

    @property
    def needs_saliency(self) -> bool:
        return "saliency" in self.inputs


def _file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _saliency_labeller(cfg: ProbeConfig) -> tuple[Any, str]:
    """(label(rgb [n, H, W, 3], states [n, S]) -> uint8 [n, H, W], provenance) of the config's saliency source."""
    camera, n_objects = None, 1
    if cfg.saliency == "oracle":
        env = MetaWorldPixelEnv(**env_kwargs(cfg.env))
        camera, n_objects = env.camera_model, env.n_objects
        env.close()
    if cfg.saliency == "picanet" and not Path(cfg.saliency_ckpt).is_file():
        raise ConfigError(f"saliency_ckpt: no such file: {cfg.saliency_ckpt}")
    source = make_saliency_source(
        cfg.saliency, camera=camera, n_objects=n_objects, checkpoint=cfg.saliency_ckpt, sigma=cfg.saliency_sigma
    )
    if cfg.saliency == "oracle":
        provenance = f"oracle sigma={cfg.saliency_sigma}"
    else:
        provenance = f"picanet sha1={_file_sha1(cfg.saliency_ckpt)}"
    return labeller(source, "cpu"), provenance


@register_stage("probe", ProbeConfig)
def run_probe(cfg: ProbeConfig, ctx: RunContext) -> dict[str, Any]:
    """Record (or reuse) the demos, derive what the encoder reads, clone the expert, evaluate; see the module doc."""
    # lazy: Lightning (and the modules built on it) load when a probe runs, not when --list-stages reads this file
    from visarl.core.runtime import build_trainer, progress_bar, quiet_lightning
    from visarl.envs.experts import make_eval_envs
    from visarl.probe.module import BCProbe, ProbeEvaluation, ProbeSettings, StepCheckpoint
    from visarl.rl.evaluate import Evaluator
    from visarl.rl.module import _seed, clock_loader
    from visarl.rl.stage import build_embedder

    if cfg.trainer.devices not in (1, "1", "auto") or cfg.trainer.num_nodes != 1:
        raise ConfigError("trainer.devices / num_nodes: a probe runs on one device (its demos are small)")
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seconds: dict[str, float] = {}
    kwargs = env_kwargs(cfg.env)
    demo_dir = Path(cfg.demo_dir) if cfg.demo_dir else ctx.run_dir / "demos"
    spec = DemoSet(resolve_task(cfg.env.task), cfg.demos, cfg.seed, kwargs, cfg.end_on_success, cfg.demo_noise)
    t0 = time.perf_counter()
    manifest = record_demos(demo_dir, spec, producer_attrs(cfg.env, to_yaml(cfg)), cfg.trainer.enable_progress_bar)
    seconds["demos"] = time.perf_counter() - t0

    label = None
    if cfg.needs_saliency:
        t0 = time.perf_counter()
        label, provenance = _saliency_labeller(cfg)
        add_field(demo_dir, "saliency", ("rgb", "state"), lambda rows: label(rows["rgb"], rows["state"]), provenance)
        seconds["saliency"] = time.perf_counter() - t0
    embedder, embedded = None, 0
    size = cfg.env.image_size
    if cfg.encoder == "mmae":
        t0 = time.perf_counter()
        embedder = build_embedder(cfg.encoder_ckpt, cfg.variant, tuple(cfg.modalities), cfg.pooling, size)
        embedded = add_field(demo_dir, embedder.key, embedder.inputs, embedder, embedder.describe())
        seconds["embed"] = time.perf_counter() - t0
        encoder: torch.nn.Module = IdentityEncoder(embedder.dim, key=embedder.key)
    elif cfg.encoder == "cnn":
        shapes = {"rgb": (3, size, size), "saliency": (1, size, size)}
        encoder = make_encoder("cnn", cfg.variant, shapes, num_layers=cfg.cnn_layers, num_filters=cfg.cnn_filters)
    else:
        encoder = IdentityEncoder(STATE_DIM, key="state")
    policy = BCPolicy(encoder, 4, cfg.bc.hidden_dim, cfg.bc.num_layers, cfg.bc.input_norm, cfg.bc.norm_eps)
    obs, actions = load_demos(demo_dir, policy.obs_keys)

    def observe(o: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the policy derives from a live frame: its saliency map, then its embedding (once per frame)."""
        if label is not None:
            o["saliency"] = label(o["rgb"], o["state"])
        if embedder is not None:
            embedder.add_to(o)
        return o

    evaluator = None
    if cfg.eval.episodes > 0:
        evaluator = Evaluator(
            lambda n: make_eval_envs(n, kwargs, end_on_success=cfg.end_on_success, asynchronous=cfg.eval.async_envs),
            cfg.eval.num_envs,
            cfg.eval.episodes,
            _seed(cfg.seed, "probe-eval"),
            policy.obs_keys,
            observe if (label is not None or embedder is not None) else None,
            cfg.eval.strip_frames,
            progress=cfg.trainer.enable_progress_bar,
        )
    info = {
        "task": spec.task,
        "encoder": cfg.encoder,
        "inputs": list(cfg.inputs),
        "demos": cfg.demos,
        "demo_rows": int(len(actions)),
        "demo_dir": str(demo_dir),
        "expert_success": manifest["expert_success"],
    }
    settings = ProbeSettings(
        steps=cfg.bc.steps,
        batch_size=cfg.bc.batch_size,
        lr=cfg.bc.lr,
        weight_decay=cfg.bc.weight_decay,
        cosine=cfg.bc.lr_schedule == "cosine",
        eval_every=cfg.eval.every,
        seed=cfg.seed,
        run_dir=str(ctx.run_dir),
        info=info,
    )
    module = BCProbe(policy, settings, obs, actions, evaluator)
    last = ctx.run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if ctx.resume and last.is_file() else None
    purge_step = None
    if ckpt_path is not None:
        purge_step = int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"]) + 1
    elif ctx.resume:
        purge_step = 0
    callbacks: list = [
        ProbeEvaluation(cfg.eval.every, cfg.bc.steps),
        StepCheckpoint(ctx.run_dir / "checkpoints", cfg.checkpoint_every, cfg.bc.steps),
    ]
    if cfg.trainer.enable_progress_bar:
        callbacks.append(progress_bar(refresh_rate=50))  # the shared bar: drawn only once its total is known
    trainer = build_trainer(
        cfg.trainer,
        ctx.run_dir,
        callbacks=callbacks,
        logger={"default_hp_metric": False, "purge_step": purge_step},
        devices=1,
        max_steps=cfg.bc.steps,
        max_epochs=-1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings(), quiet_lightning():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        try:
            trainer.fit(module, train_dataloaders=clock_loader(), ckpt_path=ckpt_path, weights_only=True)
        finally:
            if evaluator is not None:
                evaluator.close()
            torch.set_num_threads(threads)
    seconds["fit"] = time.perf_counter() - t0
    seconds["eval"] = sum(r.get("seconds", 0.0) for r in module.eval_history)
    seconds["total"] = time.perf_counter() - t_start
    module.settings.info = {
        **info,
        "embedded_rows": embedded,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    module.write_json()
    summary = module.summary()
    final, best = summary["final"], summary["best"]
    if final is not None:
        log.info(
            f"probe: {spec.task} {cfg.encoder} {'+'.join(cfg.inputs)}: final success {final['success_rate']:.2f} "
            f"(best {best['success_rate']:.2f} at step {best['step']}), expert {manifest['expert_success']:.2f}, "
            f"{seconds['total']:.0f} s"
        )
    return summary
