"""`stage: rl`: pixel (or state) SAC with any encoder and input variant; the shared SAC config and runner.

    python -m visarl.fit --config conf/rl/cnn_rgbs.yaml
    python -m visarl.fit --config conf/rl/cnn_rgb.yaml trainer.devices=2 trainer.strategy=ddp
    python -m visarl.fit --resume runs/cnn_rgbs/<run>

The same runner (:func:`fit_sac`) serves ``stage: collect`` with ``policy: sac_state``: state-based SAC whose
replay, written to shards with rendered frames, becomes the pretraining dataset.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visarl.config import ConfigError, RunConfig, choice, to_yaml
from visarl.core.log import get_logger
from visarl.core.runtime import build_trainer, checkpoint_dir, quiet_lightning, resume_checkpoint
from visarl.data.shards import producer_attrs
from visarl.envs import CAMERAS, STATE_DIM, EnvConfig
from visarl.mae.frozen import FrameEmbedder, load_encoder
from visarl.registry import RunContext, register_stage
from visarl.rl.encoders import ENCODER_NAMES, PIXEL_VARIANTS, IdentityEncoder, make_encoder
from visarl.rl.networks import CONV_INITS
from visarl.rl.sac import SACAgent
from visarl.rl.saliency_source import SALIENCY_SOURCES
from visarl.saliency.picanet import load_picanet

log = get_logger(__name__)

MOVING_CAMERAS = ("behindGripper", "gripperPOV")
"""Cameras attached to the robot: their pose is not in the state, so the oracle cannot project keypoints."""


@dataclass
class SACConfig:
    """SAC hyperparameters. The paper defers them to RAD [9] and SAC-AE [10]; the defaults are the ViSaRL
    authors' settings (Appendix F for the head sizes). Each is traced in docs/fidelity.md."""

    batch_size: int = 128
    """Transitions per update (authors' setting; SAC-AE [10] uses 128 as well)."""
    lr: float = 1e-4
    """Adam learning rate of the actor, the critics and the CNN encoder (authors' setting)."""
    alpha_lr: float = 1e-4
    """Adam learning rate of the entropy temperature (authors' setting)."""
    init_temperature: float = 0.1
    """Initial entropy temperature alpha (authors' setting; SAC-AE [10] starts at 0.1 too)."""
    discount: float = 0.99
    """Discount factor gamma (authors' setting)."""
    tau: float = 0.005
    """Polyak rate of the target critics (authors' setting)."""
    target_encoder: bool = False
    """Give a trainable (CNN) encoder a Polyak-averaged target copy for the target critic (SAC-AE, DrQ). The authors'
    code has none: its target critic reads the online encoder's features (docs/fidelity.md)."""
    encoder_tau: float | None = None
    """Polyak rate of the target CNN encoder (``target_encoder`` only); None uses ``tau`` (SAC-AE uses 0.05)."""
    actor_update_freq: int = 2
    """Update the actor and temperature every this many critic updates (authors' setting, as SAC-AE)."""
    target_update_freq: int = 2
    """Update the targets every this many critic updates (authors' setting, as SAC-AE)."""
    log_std_min: float = -10.0
    """Lower bound of the actor's log-std (authors' setting, as SAC-AE)."""
    log_std_max: float = 2.0
    """Upper bound of the actor's log-std (authors' setting, as SAC-AE)."""
    feature_dim: int = 100
    """Width of each head's Linear + LayerNorm projection (Appendix F)."""
    hidden_dim: int = 1024
    """Hidden units of each head's MLP layers (Appendix F)."""
    num_layers: int = 3
    """Hidden layers of each head's MLP (Appendix F: 3; the authors' code has 2, see docs/fidelity.md)."""
    learning_starts: int = 1000
    """Env steps of uniformly random actions before the first update (authors' setting)."""
    initial_updates: int = 1000
    """Updates made at once when ``learning_starts`` is reached, in place of that step's usual updates (the
    authors' loop, from SAC-AE: ``num_updates = init_steps if step == init_steps else 1``); 0 makes none."""
    updates_per_step: float = 1.0
    """SAC updates per env step of each rank (SAC-AE: 1); fractional values accumulate."""
    replay_size: int = 0
    """Transitions the in-memory replay keeps per rank; 0 keeps all of the run (SAC-AE: capacity = training steps)."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "actor_update_freq", "target_update_freq", "feature_dim", "hidden_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"sac.{key}: must be positive, got {getattr(self, key)}")
        if self.num_layers < 1 or self.learning_starts < 0 or self.replay_size < 0 or self.updates_per_step < 0:
            raise ConfigError("sac.num_layers must be >= 1; learning_starts, replay_size, updates_per_step >= 0")
        if self.initial_updates < 0:
            raise ConfigError(f"sac.initial_updates must be >= 0, got {self.initial_updates}")
        if not 0 < self.tau <= 1 or not 0 <= self.discount <= 1 or self.lr <= 0 or self.alpha_lr <= 0:
            raise ConfigError(f"sac: need 0 < tau <= 1, 0 <= discount <= 1 and positive lr (got {self})")
        if self.log_std_min >= self.log_std_max:
            raise ConfigError(f"sac.log_std_min {self.log_std_min} must be below sac.log_std_max {self.log_std_max}")

    def agent_kwargs(self) -> dict[str, Any]:
        """The :class:`SACAgent` constructor numbers (the agent takes numbers, never this config)."""
        return {
            "feature_dim": self.feature_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "discount": self.discount,
            "init_temperature": self.init_temperature,
            "log_std_bounds": (self.log_std_min, self.log_std_max),
            "target_encoder": self.target_encoder,
        }

    def update_kwargs(self) -> dict[str, Any]:
        """The schedule keywords of :meth:`SACAgent.update`."""
        return {
            "actor_update_freq": self.actor_update_freq,
            "target_update_freq": self.target_update_freq,
            "tau": self.tau,
            "encoder_tau": self.encoder_tau,
        }

    def optimizer_kwargs(self) -> dict[str, float]:
        """The learning rates of :func:`make_optimizers`."""
        return {"lr": self.lr, "alpha_lr": self.alpha_lr}


@dataclass
class RolloutEvalConfig:
    """Periodic success-rate evaluation with the deterministic policy (the mean action): what rl's and the probe's
    ``eval:`` sections share; each stage's subclass adds its own fields."""

    every: int = 10_000
    """Env steps between evaluations (authors' setting: 10k); 0 evaluates only at the end (rl: if ``final``)."""
    episodes: int = 50
    """Episodes per evaluation (paper: 50 rollouts, Table I; R3M: 50)."""
    num_envs: int = 5
    """Evaluation envs stepping in parallel (worker processes when ``async_envs``)."""
    strip_frames: int = 8
    """Frames of one evaluation rollout shown side by side in TensorBoard."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.episodes < 1 or self.num_envs < 1 or self.strip_frames < 1:
            raise ConfigError(f"eval: every must be >= 0, episodes, num_envs and strip_frames >= 1 (got {self})")


@dataclass
class EvalConfig(RolloutEvalConfig):
    """Periodic evaluation with the deterministic policy (the mean action)."""

    final: bool = True
    """Also evaluate when training ends (if the last periodic evaluation was earlier)."""


@dataclass
class SACRunConfig(RunConfig):
    """What ``stage: rl`` and ``stage: collect`` (policy: sac_state) share: env, SAC, loop, evaluation."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The pixel environment (500-step episodes, no extra action repeat: the authors' settings)."""
    sac: SACConfig = field(default_factory=SACConfig)
    """SAC hyperparameters."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation schedule."""
    num_steps: int = 1_000_000
    """Env steps (transitions) over all ranks (authors' setting: 1M)."""
    num_envs: int = 1
    """Training envs per rank, stepped together."""
    async_envs: bool = True
    """Run each env in its own worker process (one renderer per process); False steps them in this process."""
    rows_per_shard: int = 5000
    """Rows (frames) per HDF5 replay shard."""
    data_dir: str = ""
    """Where the replay shards go; default <run_dir>/replay (rl) or data/<task>/replay (collect)."""
    checkpoint_every: int = 10_000
    """Env steps between checkpoints (<run_dir>/checkpoints/last.ckpt)."""
    log_every: int = 1000
    """Env steps between scalar logs (losses, sps): the only host syncs of the update loop."""
    torch_threads: int = 0
    """Intra-op threads of torch during the run; 0 keeps torch's default. On a busy CPU, 1 thread is often faster
    for small networks (spinning OpenMP threads then compete with the env workers)."""
    saliency: str = "none"
    """Where saliency maps for new frames come from: none; picanet (the paper's method: the trained predictor, online);
    oracle (PRIVILEGED: keypoints projected from the simulator state, for tests and ablations only). eval.json records
    the source the policy read, and the report marks oracle runs with a dagger."""
    saliency_ckpt: str = ""
    """PiCANet checkpoint for ``saliency: picanet``."""
    saliency_sigma: float = 10.0
    """Oracle blob sigma in pixels of a 400 px frame, the annotation clicks' sigma (Fig. 5; visarl.core.maps)."""

    def _check_loop(self) -> None:
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads: must be >= 0, got {self.torch_threads}")
        for key in ("num_steps", "num_envs", "rows_per_shard", "checkpoint_every", "log_every"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be positive, got {getattr(self, key)}")
        choice("saliency", self.saliency, SALIENCY_SOURCES)
        if self.saliency == "picanet" and not self.saliency_ckpt:
            raise ConfigError("saliency: picanet needs saliency_ckpt: <path to a trained PiCANet checkpoint>")
        if self.saliency == "oracle" and self.env.camera in MOVING_CAMERAS:
            raise ConfigError(f"saliency: oracle needs a world-fixed env.camera, not {self.env.camera!r}")
        choice("env.camera", self.env.camera, CAMERAS)


@dataclass
class RLConfig(SACRunConfig):
    """``stage: rl``: SAC on pixels (or the state) with the encoder and input variant of a Table I row."""

    stage: str = "rl"
    encoder: str = "cnn"
    """identity (the 39-d state), cnn (the paper's CNN, trained by the critic) or mmae (a frozen MultiMAE)."""
    variant: str = "rgb"
    """Encoder input: rgb, saliency, rgb_x_saliency or rgbs (cnn); rgb, saliency or rgbs (mmae)."""
    encoder_ckpt: str = ""
    """MultiMAE checkpoint (from the pretrain stage) for ``encoder: mmae``."""
    modalities: list[str] = field(default_factory=list)
    """MultiMAE inputs at RL time; empty = the variant's. A rgb+saliency checkpoint with [rgb] is the paper's
    'pretrain-only' row."""
    pooling: str = "mean"
    """MultiMAE state: mean of the token embeddings (paper) or the global token."""
    cnn_layers: int = 11
    """Conv layers of the CNN (Appendix F: 11)."""
    cnn_filters: int = 32
    """Filters per conv layer (Appendix F: 32)."""
    cnn_padding: int = 0
    """Padding of the first (stride-2) conv; the others have none. 0: Appendix F's "no padding" and the authors' code
    (32x11x11 features at 64 px); 1 gives the 32x12x12 Appendix F also states (docs/fidelity.md)."""
    cnn_last_relu: bool = False
    """ReLU after the last conv (the authors' and SAC-AE's encoders have none)."""
    cnn_center: bool = False
    """Shift the CNN input from [0, 1] to [-0.5, 0.5] (DrQ-v2); the authors only divide by 255."""
    cnn_init: str = "delta_orthogonal"
    """Conv weight init: delta_orthogonal (the authors' and SAC-AE's) or orthogonal (the whole kernel)."""
    saliency_scale: float = 1.0
    """Factor on a saliency map that enters the CNN as a channel (variants saliency, rgbs): 1 keeps it in [0, 1] like
    rgb; 0.00392156862745098 (1/255) restores the authors' double division by 255 (docs/fidelity.md)."""
    encoder_precision: str = "auto"
    """'bf16' autocasts the encoder alone (heads, losses, optimizer stay fp32); '32' keeps it fp32. 'auto' is bf16
    for the paper's CNN on a CPU with native bf16 (AVX512-BF16 or AMX), else fp32 (see ``native_bf16``): there it
    makes paper-CNN updates faster (benchmarks/sac_updates.py times it), and benchmarks/bf16_reach.py shows it
    moves what SAC learns on reach far less than a change of seed does."""

    def __post_init__(self) -> None:
        self._check_loop()
        choice("encoder", self.encoder, ENCODER_NAMES)
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
        choice("encoder_precision", self.encoder_precision, ["auto", "32", "bf16"])
        if self.cnn_layers < 1 or self.cnn_filters < 1 or self.cnn_padding < 0:
            raise ConfigError("cnn_layers and cnn_filters must be >= 1, cnn_padding >= 0")
        choice("cnn_init", self.cnn_init, list(CONV_INITS))
        if self.saliency_scale <= 0:
            raise ConfigError(f"saliency_scale: must be positive, got {self.saliency_scale}")
        if self.needs_saliency and self.saliency == "none":
            raise ConfigError(
                f"variant: {self.variant!r} reads saliency maps, but saliency: none; "
                "set saliency: oracle, or saliency: picanet with saliency_ckpt: <checkpoint>"
            )

    @property
    def obs_keys(self) -> tuple[str, ...]:
        if self.encoder == "identity":
            return ("state",)
        if self.encoder == "mmae" and self.modalities:
            return tuple(self.modalities)
        return PIXEL_VARIANTS[self.variant].obs_keys

    @property
    def needs_saliency(self) -> bool:
        return "saliency" in self.obs_keys

    def cnn_options(self) -> dict[str, Any]:
        """The CNN's settings beyond depth and width, as :func:`make_encoder` keywords."""
        return {
            "first_padding": self.cnn_padding,
            "last_relu": self.cnn_last_relu,
            "center": self.cnn_center,
            "saliency_scale": self.saliency_scale,
            "conv_init": self.cnn_init,
        }


# --------------------------------------------------------------------------------------------------
# building and running


def native_bf16(accelerator: str) -> bool:
    """Whether ``encoder_precision: auto`` picks bf16: only on a CPU with native bf16 convolutions.

    There bf16 makes paper-CNN updates faster. On a GPU the SAC update at batch 128 is bound by kernel launches,
    not arithmetic, so bf16 gains nothing measurable and GPUs keep fp32; ``trainer.precision=bf16-mixed`` or
    ``encoder_precision: bf16`` still ask for bf16 there.
    """
    if accelerator in ("gpu", "cuda", "mps", "tpu") or (accelerator == "auto" and torch.cuda.is_available()):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but stable since torch 2.1
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def build_embedder(
    encoder_ckpt: str, variant: str, modalities: tuple[str, ...], pooling: str, image_size: int
) -> FrameEmbedder:
    """The frozen MultiMAE of ``encoder_ckpt`` as a :class:`FrameEmbedder` (inputs: ``modalities`` or the variant's).

    Raises ``ConfigError`` naming the file when it is not a MultiMAE checkpoint, lacks an input, or was trained
    at another image size than the env renders.
    """
    inputs = tuple(modalities) or PIXEL_VARIANTS[variant].obs_keys
    try:
        module = load_encoder(encoder_ckpt, inputs, pooling)
    except ValueError as e:
        raise ConfigError(f"encoder_ckpt: {e}") from e
    trained = int(module.encoder.image_size)
    if trained != image_size:
        raise ConfigError(
            f"encoder_ckpt: {encoder_ckpt} was trained on {trained}x{trained} frames, but env.image_size is "
            f"{image_size}; set env.image_size={trained} or pretrain at {image_size}"
        )
    return FrameEmbedder(module)


def agent_encoder(cfg: SACRunConfig) -> str:
    """The encoder a SAC config asks for: an rl config's ``encoder``; the state for any other (collect)."""
    return cfg.encoder if isinstance(cfg, RLConfig) else "identity"


def encoder_dtype(cfg: SACRunConfig) -> torch.dtype | None:
    """The autocast dtype of the CNN encoder (``encoder_precision``, 'auto' resolved); None for other encoders."""
    if agent_encoder(cfg) != "cnn":
        return None
    precision = cfg.encoder_precision
    if precision == "auto":
        precision = "bf16" if native_bf16(cfg.trainer.accelerator) else "32"
    return torch.bfloat16 if precision == "bf16" else None


def build_agent(cfg: SACRunConfig) -> tuple[SACAgent, FrameEmbedder | None]:
    """The SAC agent of a config (observation shapes from ``cfg.env``, heads from ``cfg.sac``), and the frame
    embedder it reads.

    An rl config picks the encoder (``encoder``, ``variant``, the ``cnn_*`` fields, ``encoder_ckpt``); any other
    SAC config (collect's ``policy: sac_state``) reads the 39-d state. For ``encoder: mmae`` the frozen MultiMAE
    is not part of the agent: a :class:`FrameEmbedder` encodes each frame once, when it is observed, and the agent
    reads the stored embedding (observation key ``embedder.key``). Every other encoder returns ``None`` as the
    embedder.
    """
    size = cfg.env.image_size
    shapes = {"rgb": (3, size, size), "saliency": (1, size, size), "state": (STATE_DIM,)}
    encoder, embedder = agent_encoder(cfg), None
    if encoder == "identity":
        enc = make_encoder("identity", "", shapes)
    elif encoder == "cnn":
        enc = make_encoder(
            "cnn", cfg.variant, shapes, num_layers=cfg.cnn_layers, num_filters=cfg.cnn_filters, **cfg.cnn_options()
        )
    else:
        embedder = build_embedder(cfg.encoder_ckpt, cfg.variant, tuple(cfg.modalities), cfg.pooling, size)
        enc = IdentityEncoder(embedder.dim, key=embedder.key)
    agent = SACAgent(
        enc,
        action_dim=4,  # Meta-World: end-effector xyz delta + gripper torque (Sec. IV)
        encoder_dtype=encoder_dtype(cfg),
        **cfg.sac.agent_kwargs(),
    )
    return agent, embedder


def _strategy(cfg: SACRunConfig) -> Any:
    """DDP with ``find_unused_parameters``: each of SAC's losses reaches only part of the agent."""
    strategy = cfg.trainer.strategy
    if strategy in ("ddp", "ddp_find_unused_parameters_true"):
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if strategy.startswith("ddp") or strategy.startswith("fsdp") or strategy.startswith("deepspeed"):
        raise ConfigError(f"trainer.strategy: {strategy!r} is not supported by the SAC loop; use 'auto' or 'ddp'")
    return strategy


def env_step_progress_bar(num_steps: int, desc: str, refresh_rate: int) -> Any:
    """Lightning's tqdm bar counting env steps out of ``num_steps`` (a total and an ETA), not the endless clock's
    batches; a resumed run starts at its checkpoint's step."""
    import sys

    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class _Bar(TQDMProgressBar):
        def init_train_tqdm(self) -> Tqdm:
            start = min(self.trainer.lightning_module.env_step, num_steps)
            return Tqdm(
                desc=desc,
                total=num_steps,
                initial=start,
                unit="step",
                position=2 * self.process_position,
                disable=self.is_disabled,
                leave=True,
                dynamic_ncols=True,
                file=sys.stdout,
                smoothing=0,
            )

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            pass  # one bar for the whole run, made by init_train_tqdm: the clock's single epoch has no length

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if (batch_idx + 1) % self.refresh_rate == 0 or module.env_step >= num_steps:
                bar = self.train_progress_bar
                bar.n = min(module.env_step, num_steps)
                bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
                bar.refresh()

    return _Bar(refresh_rate=refresh_rate)


def fit_sac(
    cfg: SACRunConfig,
    ctx: RunContext,
    agent: torch.nn.Module,
    *,
    data_dir: Path,
    shard_attrs: dict[str, Any],
    embedder: FrameEmbedder | None = None,
) -> dict[str, Any]:
    """Train ``agent`` with the SAC loop of ``cfg`` in ``ctx.run_dir``; resumes from its last checkpoint."""
    # lazy: the Lightning loop loads when SAC trains, not when --list-stages imports this module
    from visarl.rl.module import EnvStepCheckpoint, SACLoop, clock_loader

    if embedder is not None:  # the shards record which encoder produced the embeddings they store
        shard_attrs = {**shard_attrs, embedder.key: embedder.describe()}
    loop = SACLoop(agent, cfg, run_dir=ctx.run_dir, data_dir=data_dir, shard_attrs=shard_attrs, embedder=embedder)
    ckpt_dir = checkpoint_dir(ctx.run_dir)
    ckpt_path = resume_checkpoint(ctx.run_dir, ctx.resume, cfg.stage)
    purge_step = None  # on resume, hide the TensorBoard events the killed run logged after its checkpoint
    if ckpt_path is not None:
        purge_step = int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["visarl"]["env_step"]) + 1
    elif ctx.resume:
        purge_step = 0  # killed before its first checkpoint: it starts over
    strategy = _strategy(cfg)
    if cfg.trainer.max_steps != -1 or cfg.trainer.max_epochs is not None:
        warnings.warn(
            "trainer.max_steps / max_epochs are ignored by the SAC loop: num_steps sets its length", stacklevel=2
        )
    callbacks: list = [EnvStepCheckpoint(ckpt_dir, cfg.checkpoint_every)]
    if cfg.trainer.enable_progress_bar:  # one tick per vector step: redraw every ~100 env steps, not every step
        refresh = max(1, 100 // cfg.num_envs)
        callbacks.append(env_step_progress_bar(cfg.num_steps, f"{cfg.stage} {cfg.env.task}", refresh))
    trainer = build_trainer(
        cfg.trainer,
        ctx.run_dir,
        callbacks=callbacks,
        logger={"default_hp_metric": False, "purge_step": purge_step},
        strategy=strategy,
        max_epochs=-1,
        max_steps=-1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    threads = torch.get_num_threads()
    with warnings.catch_warnings(), quiet_lightning():
        # an endless clock needs no workers, and its epoch never ends
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infinite.*")
        try:
            if cfg.torch_threads > 0:
                torch.set_num_threads(cfg.torch_threads)
            trainer.fit(loop, train_dataloaders=clock_loader(), ckpt_path=ckpt_path, weights_only=True)
        finally:
            loop.close()
            torch.set_num_threads(threads)
    return loop.summary


def check_saliency_source(cfg: SACRunConfig) -> None:
    """``saliency: picanet`` needs a readable PiCANet weights file: a ``ConfigError`` naming it otherwise."""
    if cfg.saliency != "picanet":
        return
    try:
        load_picanet(cfg.saliency_ckpt)
    except ValueError as e:  # missing, foreign, corrupt or mismatched weights; the message names the file
        raise ConfigError(f"saliency_ckpt: {e}") from e


def check_rl(cfg: RLConfig) -> None:
    """The checkpoints an rl run reads (PiCANet for online saliency, the frozen MultiMAE), checked before the run
    directory is created."""
    check_saliency_source(cfg)
    if cfg.encoder == "mmae":
        build_embedder(cfg.encoder_ckpt, cfg.variant, tuple(cfg.modalities), cfg.pooling, cfg.env.image_size)


@register_stage("rl", RLConfig, check=check_rl)
def run_rl(cfg: RLConfig, ctx: RunContext) -> dict[str, Any]:
    """Train SAC per ``cfg``; shards in ``data_dir`` (default <run_dir>/replay), eval.json in the run dir."""
    data_dir = Path(cfg.data_dir) if cfg.data_dir else ctx.run_dir / "replay"
    agent, embedder = build_agent(cfg)
    if cfg.encoder == "cnn":
        chosen = "bf16" if agent.encoder_dtype == torch.bfloat16 else "32"
        log.info(f"rl: encoder precision {chosen}" + (" (auto)" if cfg.encoder_precision == "auto" else ""))
    attrs = producer_attrs(cfg.env, to_yaml(cfg))
    return fit_sac(cfg, ctx, agent, data_dir=data_dir, shard_attrs=attrs, embedder=embedder)
