"""One global step of the RL core (docs/objective.md §7), as plain functions.

    collect():  N x B prompts -> rollout engine (mu_old: ids, logp_behavior, routing e_mu_old)
                -> verifier rewards -> group advantages
                -> training engine at theta_old (pi_old: logp_old; routing e_pi_old)
    update():   one mini-batch -> forward with the arm's replay (pi_theta) -> objective -> AdamW step

Replay per arm (docs/objective.md §5):
    none: every forward routes naturally.
    r2:   the logp_old pass routes naturally and records e_pi_old; every update replays e_pi_old.
    r3:   the logp_old pass and every update replay the rollout engine's e_mu_old.
Positions the rollout engine never processed (pads, the last sampled token) carry -1: routed naturally.

Device and ranks (rl_core.training.distributed): tensors live where the rollout batch is put
(``ranks.device``); under torchrun each rank scores and updates its share of every mini-batch
(``ranks.share``) and the shares' per-token tensors are all-gathered (``ranks.gather``), so the Batch and the
metrics are whole on every rank. With ``SINGLE`` (one process) share and gather are the identity: the code
path of one process.

Mini-batch 1 has no separate logp_old pass: its update is the first of the global step, at theta = theta_old,
so pi_old of its rows IS that update's forward (detached), routing included (verl and TRL skip the pass
the same way when on-policy). The pass scores mini-batches 2..N only; at N = 1 it disappears.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from rl_core.config import RunConfig
from rl_core.losses.objectives import ADVANTAGES, LossParams, Objective
from rl_core.policy.model import routing_disagreement
from rl_core.rollout.base import RolloutBatch, RolloutEngine
from rl_core.training.distributed import SINGLE, Ranks, clip_grad_norm, params_finite
from rl_core.training.scoring import token_logprobs


@dataclass
class Batch:
    """A scored rollout batch of M = N x B x G responses, group-contiguous rows."""

    rollout: RolloutBatch
    rewards: torch.Tensor  # (M,)
    advantages: torch.Tensor  # (M,)
    logp_old: torch.Tensor  # (M, T) pi_old, training engine at theta_old
    routing_old: torch.Tensor  # (M, T, L, k) e_pi_old: training engine's natural routing at theta_old
    replay: torch.Tensor | None  # (M, T, L, k) what every update forward replays (None: route naturally)
    processed: torch.Tensor  # (M, T) bool: tokens the rollout engine ran through its router
    old_pending: torch.Tensor  # (M,) bool: rows whose pi_old the first update fills in (mini-batch 1)
    # (M, T) each: the per-token tensors of the update that trained each row (LossOutput.tokens: IS weight,
    # clip mask, dropped by a correction), filled in by update(); what the rollout samples show
    tokens: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def prompt_indices(n_train: int, seed: int, global_step: int, count: int) -> list[int]:
    """Prompts of a global step: consecutive slices of seeded per-epoch permutations.

    A pure function of (seed, global_step), so a resumed run draws exactly the prompts it would have.
    """
    start = global_step * count
    out = []
    for i in range(start, start + count):
        epoch, pos = divmod(i, n_train)
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[pos]))
    return out


def _without_prompt(routing: torch.Tensor, prompt_len: int) -> torch.Tensor:
    routing = routing.clone()
    routing[:, :prompt_len] = -1
    return routing


@torch.no_grad()
def _score_old(cfg: RunConfig, policy, ro: RolloutBatch, replay_r3: torch.Tensor, ranks: Ranks = SINGLE):
    """pi_old at theta_old of mini-batches 2..N, one at a time: the same row slices and shapes as their
    updates (each rank its share). Mini-batch 1's rows are left as NaN / -1 for its update to fill in
    (module docstring)."""
    size = cfg.train.batch_prompts * cfg.rollout.group_size
    M, T = ro.input_ids.shape
    dev = ro.input_ids.device
    logp = torch.full((M, T), float("nan"), device=dev)
    routing = torch.full(ro.routing.shape, -1, dtype=torch.long, device=dev)
    natural = routing.clone()
    for start in range(size, M, size):
        rows = slice(start, start + size)
        mine = ranks.share(torch.arange(start, start + size, device=dev)) if ranks.dp_size > 1 else rows
        replay = replay_r3[mine] if cfg.replay.mode == "r3" else None
        out = token_logprobs(policy, ro.input_ids[mine], ro.attention_mask[mine], cfg.rollout.temperature,
                             replay=replay, precision=cfg.train.precision)
        logp[rows], routing[rows], natural[rows] = (ranks.gather(t) for t in (out.logp, out.routing,
                                                                              out.routing_natural))
    return logp, routing, natural


@dataclass
class Sampled:
    """What the rollout engine and the verifier give: M = N x B x G responses, group-contiguous rows."""

    rollout: RolloutBatch
    rewards: torch.Tensor  # (M,)
    advantages: torch.Tensor  # (M,)

    def to(self, device: torch.device) -> Sampled:
        return Sampled(to_device(self.rollout, device), self.rewards.to(device), self.advantages.to(device))


def to_device(ro: RolloutBatch, device: torch.device) -> RolloutBatch:
    """The rollout batch with its tensors on ``device`` (a no-op where they already are)."""
    tensors = [f.name for f in dataclasses.fields(ro) if torch.is_tensor(getattr(ro, f.name))]
    return dataclasses.replace(ro, **{name: getattr(ro, name).to(device) for name in tensors})


def sample(cfg: RunConfig, engine: RolloutEngine, task, problems: list, objective: Objective,
           generator: torch.Generator) -> tuple[Sampled, dict]:
    """Sample G responses per problem, reward them, compute the advantages (on the device the engine
    returned the batch on). Returns (sampled, metrics)."""
    G = cfg.rollout.group_size
    t0 = time.perf_counter()
    prompts = [task.encode_prompt(p) for p in problems for _ in range(G)]
    ro = engine.generate(prompts, cfg.rollout.max_new_tokens, cfg.rollout.temperature, generator)
    t_rollout = time.perf_counter() - t0
    texts = [task.decode(row[ro.prompt_len:].tolist()) for row in ro.input_ids]
    rewards = torch.tensor([task.reward(t, p) for t, p in zip(texts, [p for p in problems for _ in range(G)],
                                                               strict=True)], dtype=torch.float32,
                           device=ro.input_ids.device)
    advantages = ADVANTAGES[objective.advantage](rewards, G)
    return Sampled(ro, rewards, advantages), {"perf/rollout_s": t_rollout,
                                              "response/tokens": int(ro.response_mask.sum())}


def score(cfg: RunConfig, policy, sampled: Sampled, ranks: Ranks = SINGLE) -> Batch:
    """The training engine's pi_old and routing of a sampled batch, and what every update replays."""
    ro, G = sampled.rollout, cfg.rollout.group_size
    processed = ro.routing[..., 0, 0] >= 0
    replay_r3 = ro.routing if cfg.replay.replay_prompt else _without_prompt(ro.routing, ro.prompt_len)
    logp_old, routing_used, routing_old = _score_old(cfg, policy, ro, replay_r3, ranks)
    # R2 on mini-batch 1 routes naturally (-1): at theta_old that is e_pi_old itself, bitwise.
    replay_r2 = routing_used if cfg.replay.replay_prompt else _without_prompt(routing_used, ro.prompt_len)
    replay = {"none": None, "r2": replay_r2, "r3": replay_r3}
    old_pending = torch.arange(len(ro), device=ro.input_ids.device) < cfg.train.batch_prompts * G
    tokens = {"is_weight": torch.full_like(logp_old, float("nan")),
              "clipped": torch.zeros_like(processed), "masked": torch.zeros_like(processed)}
    return Batch(ro, sampled.rewards, sampled.advantages, logp_old, routing_old, replay[cfg.replay.mode],
                 processed, old_pending, tokens)


def collect(cfg: RunConfig, policy, engine: RolloutEngine, task, problems: list,
            objective: Objective, generator: torch.Generator) -> tuple[Batch, dict]:
    """sample() then score() in one process. Returns (batch, metrics)."""
    t0 = time.perf_counter()
    sampled, metrics = sample(cfg, engine, task, problems, objective, generator)
    batch = score(cfg, policy, sampled)
    metrics["perf/old_logp_s"] = time.perf_counter() - t0 - metrics["perf/rollout_s"]
    return batch, metrics


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1))


def train_infer_kl(log_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token estimates of D_KL(mu_old || pi_old) from log r = log pi_old - log mu_old on tokens sampled
    from mu_old: k1 = -log r (unbiased, noisy, often negative) and k3 = r - 1 - log r (never negative)."""
    return -log_r, log_r.exp() - 1 - log_r


def diagnostics(batch: Batch, rows: torch.Tensor, logp_new: torch.Tensor, entropy: torch.Tensor,
                routing_new: torch.Tensor) -> dict:
    """Per-mini-batch diagnostics of docs/objective.md §8 (no gradient)."""
    ro = batch.rollout
    mask = ro.response_mask[rows]
    logp_b, logp_old = ro.logp_behavior[rows], batch.logp_old[rows]
    log_r = torch.where(mask, logp_old - logp_b, 0.0)  # log pi_old/mu_old on tokens sampled from mu_old
    lengths = mask.sum(1).float()
    processed = batch.processed[rows]
    k1, k3 = train_infer_kl(log_r)
    log_s = torch.where(mask, logp_new - logp_old, 0.0)  # log pi_theta/pi_old: staleness (0 at mini-batch 1)
    return {
        "reward/mean": float(batch.rewards[rows].mean()),
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": sum(ro.finish_reason[i] == "length" for i in rows.tolist()) / len(rows),
        "entropy/mean": _masked_mean(entropy, mask),
        "kl/train_infer_k1": _masked_mean(k1, mask),
        "kl/train_infer_k3": _masked_mean(k3, mask),
        "route/disagree_rollout_vs_old": float(routing_disagreement(ro.routing[rows], batch.routing_old[rows],
                                                                    processed)),
        "route/disagree_new_vs_old": float(routing_disagreement(routing_new, batch.routing_old[rows],
                                                                processed)),
        "logp/new_mean": _masked_mean(logp_new, mask),
        # early-warning diagnostics (analysis.margins): the largest per-token log-ratios and the effective
        # sample size of the train-inference ratios pi_old/mu_old (uncapped, the same for every objective)
        "ratio/discrepancy_max_abs_log": float(log_r.abs().max()),
        "ratio/staleness_max_abs_log": float(log_s.abs().max()),
        "is/ess_frac": ess_fraction(log_r, mask),
    }


def ess_fraction(log_w: torch.Tensor, mask: torch.Tensor) -> float:
    """Kish's effective sample size of the weights exp(log_w) over the masked tokens, as a fraction of their
    count: (sum w)^2 / (n sum w^2), 1 when every weight is equal, 1/n when one weight dominates. Computed
    from the weights over their maximum (the ratio is scale-free), so large log-ratios do not overflow."""
    lw = log_w[mask].double()
    if lw.numel() == 0:
        return 1.0
    w = (lw - lw.max()).exp()
    return float(w.sum() ** 2 / (lw.numel() * (w * w).sum()))


def update(cfg: RunConfig, policy, opt, batch: Batch, rows: torch.Tensor,
           objective: Objective, params: LossParams, ranks: Ranks = SINGLE) -> tuple[dict, bool]:
    """One optimizer step on the mini-batch `rows` (each rank on its share). Returns (metrics, finite)."""
    ro = batch.rollout
    rows = rows.to(ro.input_ids.device)
    mine = ranks.share(rows)
    replay = None if batch.replay is None else batch.replay[mine]
    new = token_logprobs(policy, ro.input_ids[mine], ro.attention_mask[mine], cfg.rollout.temperature,
                         replay=replay, with_entropy=True, precision=cfg.train.precision)
    logp_new, entropy, routing_natural = (ranks.gather(t) for t in (new.logp.detach(), new.entropy,
                                                                     new.routing_natural))
    if batch.old_pending.any():  # pi_old of those rows is this forward: valid only before any step
        if not batch.old_pending[rows].all():
            raise RuntimeError("the first update of a global step must be on mini-batch 1 (its pi_old is "
                               "that update's forward at theta_old)")
        batch.logp_old[rows] = logp_new
        batch.routing_old[rows] = routing_natural
        batch.old_pending[rows] = False
    if ranks.dp_size > 1:  # a share's loss is normalised by the whole mini-batch's counts
        params = dataclasses.replace(params, n_tokens=float(ro.response_mask[rows].sum()))
    out = objective.loss(new.logp, batch.logp_old[mine], ro.logp_behavior[mine], batch.advantages[mine],
                         ro.response_mask[mine], params)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    grad_norm = clip_grad_norm(policy, cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf"))
    if ranks.dp_size > 1:  # the loss and statistics of the whole mini-batch, the same on every rank
        with torch.no_grad():
            out = objective.loss(logp_new, batch.logp_old[rows], ro.logp_behavior[rows],
                                 batch.advantages[rows], ro.response_mask[rows], params)
    for name, value in out.tokens.items():  # the rows' per-token weights and masks (rollout samples)
        if name in batch.tokens:
            batch.tokens[name][rows] = value.to(batch.tokens[name].dtype)
    finite = bool(torch.isfinite(out.loss)) and bool(torch.isfinite(grad_norm))
    if finite:
        opt.step()
        finite = params_finite(policy, ranks)
    metrics = {k: float(v) for k, v in out.stats.items()}
    metrics["loss/value"] = float(out.loss.detach())
    metrics["grad/norm"] = float(grad_norm)
    with torch.no_grad():
        metrics.update(diagnostics(batch, rows, logp_new, entropy, routing_natural))
    return metrics, finite
