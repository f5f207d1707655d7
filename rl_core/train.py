"""Run one arm (one seed) end to end and write its run files; resumable.

    python -m rl_core.train --out RUN_DIR --config experiments/my_arm.yaml [KEY=VALUE ...]
    python -m rl_core.train --out RUN_DIR --config-json '{...}' --meta-json '{...}'   (the workflow)

Run files (the contract with the workflow and the analysis):
    config.json    the resolved RunConfig
    meta.json      grid / figure / arm / label / seed (from the workflow; optional)
    metrics.jsonl  one JSON row per gradient step, plus eval rows (step 0, every eval.every, the last)
    samples.jsonl  a few rollouts per global step and benchmark responses per eval (rl_core.samples;
                   train.log_samples of each)
    summary.json   status ("completed" | "diverged"), steps_done, diverged_step, reason, scores, timings
                   (wall_s and rl_wall_s count every process of a resumed run, less the work redone),
                   device (the resolved train.device, e.g. "cuda:0"), world_size (this process's ranks:
                   train.world_size), world_sizes (those every step ran at, over resumes) and
                   provenance (CPU model, torch's CPU kernel capability, library versions, git commit:
                   rl_core.provenance; bitwise equality holds only on one kernel path)
    ckpt/state.pt  policy + optimizer + counters + number of metric rows, every checkpoint_every steps
    policy/        the final policy as a Hugging Face checkpoint (transformers / vLLM load it as is)
    DONE           written last

Before any work: every model.* field must equal the init checkpoint's config.json (the architecture comes
from the checkpoint; check_init refuses a mismatch, naming the key, both values and the checkpoint).

Re-running the same command resumes from ckpt/ (metric rows past the checkpoint are dropped, so none
is duplicated or missing); a checkpoint of a different config is ignored and the run starts fresh.
NaN/Inf in the loss or the gradient norm stops the arm with status "diverged": a result, not a crash.
Under torchrun every rank runs this loop on its share of each mini-batch (rl_core.training.distributed);
rank 0 samples, evaluates and writes the run files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rl_core import config as C
from rl_core.cli import check_checkpoint, config_from_args, guard, json_arg
from rl_core.losses.objectives import OBJECTIVES, LossParams
from rl_core.orchestration.capabilities import check_capabilities
from rl_core.policy.model import compile_layers, config_value, load_pretrained, save_pretrained
from rl_core.provenance import provenance
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.rollout.factory import make_rollout_engine
from rl_core.rundir import RunFiles, hold_lock, load_checkpoint, say, set_aside, unshare
from rl_core.samples import train_samples
from rl_core.step import Sampled, prompt_indices, sample, score, update
from rl_core.tasks import EVAL_SEED, eval_fingerprint, evaluate, make_task, reusable
from rl_core.training import distributed as D
from rl_core.training.adamw import AdamW
from rl_core.training.base import OWN_OPTIMIZER_STATE, TrainingEngine


def _load_megatron(cfg: C.RunConfig, ranks: D.Ranks) -> tuple[TrainingEngine, D.Ranks]:
    """Megatron's GPTModel at train.megatron_tp x megatron_ep; the world left over is data-parallel, so the
    mini-batch is split over Megatron's data-parallel group (tensor-parallel ranks share their rows)."""
    from megatron.core import parallel_state  # optional extra

    from rl_core.training.megatron.engine import load_megatron

    t = cfg.train
    policy = load_megatron(cfg.init, t.seed, ranks.device, t.megatron_tp, t.megatron_ep, t.precision)
    data = (parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())
    group = parallel_state.get_data_parallel_group()
    return policy, D.Ranks(ranks.rank, ranks.world, ranks.device, data, group)


def _load_torch(cfg: C.RunConfig, ranks: D.Ranks) -> tuple[TrainingEngine, D.Ranks]:
    """rl_core.policy.model's MoEPolicy on this rank's device; its layers compiled with train.compile."""
    policy = load_pretrained(cfg.init).to(ranks.device)
    if cfg.train.compile:
        if ranks.world > 1:
            raise C.ConfigError(f"train.compile: true runs in one process (this run has {ranks.world} "
                                f"ranks: FSDP-sharded compiled layers are not tested here); allowed: false")
        compile_layers(policy, cfg.train.precision)
    return policy, ranks


#: train.engine -> (the policy it trains, loaded from cfg.init onto this rank's device; the ranks it trains
#: over). Both policies are TrainingEngines (rl_core.training.base: forward, config, state_dict in our
#: layout), so scoring, objectives and AdamW are shared.
TRAIN_ENGINES: dict[str, Callable[[C.RunConfig, D.Ranks], tuple[TrainingEngine, D.Ranks]]] = {
    "torch": _load_torch, "megatron": _load_megatron}


def run_eval(cfg: C.RunConfig, policy, task, step: int, state_dict: dict | None = None,
             device: torch.device | None = None, reuse: Path | None = None) -> dict:
    """The benchmark on an fp32 embedded engine built from ``state_dict`` (default: the policy's), on
    ``device`` (default: cpu); or the result stored at ``reuse`` (the cold start's benchmark) when its
    fingerprint says it was made from the same weights, settings and code (else computed, saying why)."""
    t0 = time.perf_counter()
    device = torch.device("cpu") if device is None else device
    sd = policy.state_dict() if state_dict is None else state_dict
    res = None
    if reuse is not None:
        stored, why = reusable(reuse, eval_fingerprint(cfg, sd, policy.config, device.type))
        print(f"step-0 eval: {why}" + ("" if stored else "; computing it here"), flush=True)
        res = stored or None
    if res is None:
        make = lambda: EmbeddedRolloutEngine(policy.config, sd, "fp32")  # noqa: E731
        engine = make() if device.type == "cpu" else D.OnDevice(make, device)
        res = evaluate(engine, task, task.bench_problems[: cfg.eval.n_problems], cfg.eval.k,
                       cfg.eval.temperature, cfg.rollout.max_new_tokens,
                       torch.Generator(device).manual_seed(EVAL_SEED))
    # perf/eval_s: this eval's wall time (a reused one: the fingerprint check), so an arm's time outside
    # its RL steps and evals can be told from its own rows (bench/arm.py). "samples" is not a metric: the
    # trainer moves it to samples.jsonl.
    samples = [{**r, "step": step} for r in res.get("samples", [])[: cfg.train.log_samples]]
    return {"step": step, "eval/score": res["score"], "eval/response_length": res["response_length"],
            "perf/eval_s": time.perf_counter() - t0, "samples": samples}


CKPT_KEYS = ("policy", "opt", "step", "global_step", "rl_wall", "rows", "config_hash")


def _resume(files: RunFiles, cfg_hash: str, policy, ranks: D.Ranks = D.SINGLE) -> dict | None:
    """The newest usable checkpoint (rl_core.rundir.load_checkpoint; rank 0 reads it, every rank gets it),
    its weights loaded into the (not yet sharded) policy; None: the run starts from scratch, saying so when
    it drops metric rows."""
    state, mine = None, policy.state_dict()  # every rank: a collective for Megatron under TP / EP
    if ranks.main:

        def why_not(state: dict) -> str:
            if set(CKPT_KEYS) - set(state):
                return f"lacks {sorted(set(CKPT_KEYS) - set(state))}"
            if state["config_hash"] != cfg_hash:
                return f"is of another config (hash {state['config_hash']}, this run {cfg_hash})"
            theirs = state["policy"]
            if not isinstance(theirs, dict) or set(theirs) != set(mine) or any(
                    getattr(theirs[k], "shape", None) != mine[k].shape for k in mine):
                return "does not fit the policy's parameters"
            if state["rows"] > files.rows():
                return f"is ahead of {files.metrics} ({state['rows']} rows recorded, {files.rows()} present)"
            return ""

        state = load_checkpoint(files.ckpt.parent, why_not)
        if state is None and files.rows():
            say(f"{files.out}: no usable checkpoint; restarting from scratch "
                f"(dropping {files.rows()} metric rows)")
        files.truncate(0 if state is None else state["rows"], None if state is None else state["step"])
    state = ranks.broadcast(state)
    if state is not None:
        policy.load_state_dict(state["policy"])
    return state


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _progress(tag: str, step: int, total: int, rows: list[dict], last_eval: dict, elapsed: float,
              steps_per_s: float) -> None:
    """One plain line per global step: progress, time, the latest eval score, the step's metrics."""
    r = rows[-1]
    eta = _clock((total - step) / steps_per_s) if steps_per_s > 0 else "?"
    score = f"{last_eval['eval/score']:.3f} @{last_eval['step']}" if last_eval else "-"
    print(f"[{tag}] step {step}/{total} {_clock(elapsed)} elapsed, eta {eta} | eval {score} | "
          f"reward {r['reward/mean']:.3f} len {r['response/length_mean']:.1f} "
          f"kl_k3 {r['kl/train_infer_k3']:.2e} clip {r['clip/frac']:.3f} "
          f"{r['perf/tokens_per_s']:.0f} tok/s", flush=True)


class Arm:
    """The live state of one run: config, task, policy, optimizer, rollout engine, counters."""

    def __init__(self, cfg: C.RunConfig, files: RunFiles, ranks: D.Ranks = D.SINGLE):
        t = cfg.train
        self.cfg, self.files, self.ranks = cfg, files, ranks
        try:
            self.task = make_task(cfg.task, cfg.init)
        except ValueError as e:  # a problem space too small for n_train / n_bench
            raise C.ConfigError(str(e)) from None
        self.policy, ranks = TRAIN_ENGINES[cfg.train.engine](cfg, ranks)
        self.ranks = ranks
        state = _resume(files, C.resume_hash(cfg), self.policy, ranks)
        # The rollout engine lives on rank 0, built from the full (resumed) weights before sharding.
        weights = D.full_state_dict(self.policy)  # every rank joins (Megatron under TP / EP gathers)
        self.engine = make_rollout_engine(cfg, self.policy, ranks.device, weights) if ranks.main else None
        self.policy = D.shard(self.policy, ranks)
        self.opt = AdamW(self.policy.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),  # torch's, bitwise
                         weight_decay=t.weight_decay)
        self.step, self.global_step, self.rl_wall = 0, 0, 0.0
        self.samples: list[dict] = []  # the last global step's or eval's rollout samples (rl_core.samples)
        self.wall_before = state.get("wall_s", 0.0) if state else 0.0  # the processes before a resume
        if state is not None:
            if OWN_OPTIMIZER_STATE in self.policy.capabilities:  # Megatron: full tensors in our layout
                self.policy.load_optimizer_state(self.opt, state["opt"])
            elif ranks.world == 1:
                self.opt.load_state_dict(state["opt"])
            else:
                D.load_optimizer_state(self.opt, state["opt"])
            self.step, self.global_step, self.rl_wall = state["step"], state["global_step"], state["rl_wall"]
        if self.engine is not None and cfg.replay.mode == "r3" and \
                "routed_experts" not in self.engine.capabilities:
            raise C.ConfigError(f"replay.mode: r3 needs the capability 'routed_experts', which the "
                                f"{cfg.rollout.engine} rollout engine does not have here")
        self.objective = OBJECTIVES[cfg.loss.objective]
        self.mb = t.batch_prompts * cfg.rollout.group_size  # responses per mini-batch
        L = cfg.loss
        self.params = LossParams.from_config(L, float(self.mb), group_size=cfg.rollout.group_size)

    def problems(self) -> list:
        """The N x B problems of the next global step (a pure function of the seed and the step)."""
        t = self.cfg.train
        idx = prompt_indices(len(self.task.train_problems), t.seed, self.global_step,
                             t.n_minibatches * t.batch_prompts)
        return [self.task.train_problems[i] for i in idx]

    def sample(self) -> tuple[Sampled, dict]:
        """Rank 0 samples the global step's rollouts; under torchrun every rank gets them."""
        cfg, ranks = self.cfg, self.ranks

        def on_rank0() -> tuple[Sampled, dict]:
            on = self.engine.device if isinstance(self.engine, D.OnDevice) else torch.device("cpu")
            gen = torch.Generator(on).manual_seed(cfg.train.seed * 1_000_003 + self.global_step)
            sampled, metrics = sample(cfg, self.engine, self.task, self.problems(), self.objective, gen)
            return (sampled if ranks.world == 1 else sampled.to(torch.device("cpu"))), metrics  # pickled

        sampled, metrics = ranks.from_main(on_rank0)
        return sampled.to(ranks.device), metrics

    def global_step_rows(self) -> tuple[list[dict], bool]:
        """Rollout, N updates in fixed order, weight sync. Returns (metric rows, finite)."""
        cfg, N = self.cfg, self.cfg.train.n_minibatches
        t0 = time.perf_counter()
        sampled, gmetrics = self.sample()
        batch = score(cfg, self.policy, sampled, self.ranks)
        gmetrics["perf/old_logp_s"] = time.perf_counter() - t0 - gmetrics["perf/rollout_s"]
        gmetrics.update({"perf/world_size": self.ranks.world,
                         "perf/cuda": int(self.ranks.device.type == "cuda")})
        rows, finite = [], True
        for j in range(N):  # mini-batch j: prompts j*B..(j+1)*B-1 with all their G samples
            t1 = time.perf_counter()
            sel = torch.arange(j * self.mb, (j + 1) * self.mb)
            metrics, finite = update(cfg, self.policy, self.opt, batch, sel, self.objective, self.params,
                                     self.ranks)
            self.step += 1
            metrics.update(gmetrics, step=self.step, global_step=self.global_step + 1, minibatch=j + 1)
            metrics["perf/update_s"] = time.perf_counter() - t1
            rows.append(metrics)
            if not finite:
                break
        # the first rows (no random draw); after the updates, which filled in their IS weights and masks
        self.samples = train_samples(batch, self.task, cfg.train.log_samples, self.global_step, self.mb, N) \
            if self.ranks.main else []
        self.global_step += 1
        weights = D.full_state_dict(self.policy)  # a collective under FSDP2: every rank joins
        if self.engine is not None:
            self.engine.sync_weights(weights)
        wall = time.perf_counter() - t0
        self.rl_wall += wall
        for r in rows:
            r["perf/global_step_s"] = wall
            r["perf/tokens_per_s"] = gmetrics["response/tokens"] / wall
        return rows, finite

    def evaluate(self, step: int, reuse: Path | None = None) -> dict:
        """The benchmark row (rank 0; {} on the others, which only join the weights' gather); ``reuse``:
        a stored benchmark of these weights (run_eval)."""
        weights = D.full_state_dict(self.policy)
        if not self.ranks.main:
            return {}
        row = run_eval(self.cfg, self.policy, self.task, step, weights, self.ranks.device, reuse)
        self.samples = row.pop("samples")
        return row

    def checkpoint(self, wall_s: float) -> None:
        """Full weights and optimizer state (the single-process format at any world size; rank 0 writes);
        ``wall_s``: the run's wall time so far, resumes included."""
        if OWN_OPTIMIZER_STATE in self.policy.capabilities:  # Megatron: gathered into our layout, any TP / EP
            opt = self.policy.optimizer_state(self.opt)
        else:
            opt = self.opt.state_dict() if self.ranks.world == 1 else D.full_optimizer_state(self.opt)
        self.files.save_ckpt({"policy": D.full_state_dict(self.policy), "opt": opt,
                              "step": self.step, "global_step": self.global_step, "rl_wall": self.rl_wall,
                              "wall_s": wall_s, "rows": self.files.rows(),
                              "config_hash": C.resume_hash(self.cfg)})


def due(step: int, every: int, n: int, last: int) -> bool:
    """True on the global step that crosses a multiple of `every` (steps advance by n), and at the end."""
    return step % every < n or step >= last


#: ModelConfig field -> its config.json name where the two differ (the rest share the name; config_value
#: also reads transformers 5's spellings num_local_experts and rope_parameters.rope_theta).
HF_NAMES = {"init_std": "initializer_range"}


def check_init(cfg: C.RunConfig) -> None:
    """The architecture comes from the init checkpoint's config.json, so every model.* field of the run's
    config must equal it: a model.* the run cannot honour is refused, not recorded as if it had been."""
    path = Path(cfg.init) / "config.json" if cfg.init else None
    if path is None or not path.is_file():
        raise C.ConfigError(f"init: {cfg.init!r} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        hf = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise C.ConfigError(f"init: {path} is not a readable JSON config ({e})") from None
    for key, mine in C.flatten(cfg.model).items():
        try:
            theirs = config_value(hf, HF_NAMES.get(key, key))
        except (KeyError, TypeError):
            theirs = "(absent)"
        if theirs != mine:
            raise C.ConfigError(
                f"model.{key}: the run's config says {mine!r} but the init checkpoint {path} "
                f"says {theirs!r}; "
                f"the architecture comes from the checkpoint, so set model.{key}={theirs!r} (or drop the "
                f"override) to run from it")


def run(cfg: C.RunConfig, out: Path, meta: dict | None = None, step0_eval: Path | None = None) -> dict:
    """Train one arm; returns the summary written to summary.json.

    Before any work: the backends' capabilities, model.* against the init checkpoint, the checkpoint's
    files; then RUN_DIR/.lock is held to the end (a second trainer refuses), results of another config
    are set aside (rl_core.rundir.set_aside), and the policy, task and checkpoint are loaded before DONE is
    removed, so a run that cannot start leaves a finished directory as it was. The device (train.device)
    and, under torchrun, the split of a mini-batch over the ranks are checked before any work too; only
    rank 0 holds the lock and writes.
    """
    t_start = time.time()
    check_capabilities(cfg)  # a backend lacking what the arm needs fails here, before any work
    check_init(cfg)
    check_checkpoint(cfg.init)
    ranks = D.from_env(cfg)  # ConfigError for cuda without a GPU; joins torchrun's process group
    torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    with hold_lock(out) if ranks.main else contextlib.nullcontext():
        if ranks.main:
            unshare(out)  # links to another run's files (rl_shared): never written through
            set_aside(out, C.to_dict(cfg))
        ranks.barrier()  # the other ranks read the checkpoint only once rank 0 has settled the directory
        return _train(cfg, out, meta, t_start, ranks, step0_eval)


def _train(cfg: C.RunConfig, out: Path, meta: dict | None, t_start: float, ranks: D.Ranks,
           step0_eval: Path | None) -> dict:
    files = RunFiles(out, writes=ranks.main)
    arm, N, total = Arm(cfg, files, ranks), cfg.train.n_minibatches, cfg.train.steps
    if ranks.main:
        (out / "DONE").unlink(missing_ok=True)
    files.write_json("config.json", C.to_dict(cfg))
    if meta:
        files.write_json("meta.json", meta)
    tag = f"{meta['figure']}/{meta['arm']}/seed{meta['seed']}" if meta else out.name
    kill_at = int(os.environ.get("RLCORE_KILL_AT_STEP", "0"))  # fault injection for the resume test
    step0, t_loop = arm.step, time.time()  # the ETA's rate counts this process's steps only (resume)
    if arm.step == 0 and (row := arm.evaluate(0, step0_eval)):
        files.append(row)
        files.append_samples(arm.samples)
    status, reason, diverged_step = "completed", "", None
    while arm.step < total:
        try:
            rows, finite = arm.global_step_rows()
        except FloatingPointError as e:
            status, reason, diverged_step = "diverged", str(e), arm.step + 1
            break
        for r in rows:
            files.append(r)
        files.append_samples(arm.samples)
        if ranks.main:
            _progress(tag, arm.step, total, rows, files.last_eval, time.time() - t_start,
                      (arm.step - step0) / (time.time() - t_loop))
        if not finite:
            status, reason, diverged_step = "diverged", "non-finite loss, gradient norm or weights", arm.step
            break
        if kill_at and arm.step >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if due(arm.step, cfg.eval.every, N, total) and (row := arm.evaluate(arm.step)):
            files.append(row)
            files.append_samples(arm.samples)
        if due(arm.step, cfg.checkpoint_every, N, total):
            arm.checkpoint(arm.wall_before + time.time() - t_start)
    # The policy the arm produced, as a Hugging Face checkpoint (loadable in transformers, servable).
    policy = D.unsharded(arm.policy, ranks)
    if not ranks.main:
        return {}
    save_pretrained(policy, out / "policy", Path(cfg.init) / "tokenizer.json")
    summary = summarise(files, status, reason, arm.step, diverged_step,
                        arm.wall_before + time.time() - t_start, arm.rl_wall)
    summary.update(device=str(ranks.device), world_size=ranks.world,
                   provenance=provenance(str(ranks.device)))  # CPU, kernel path, versions, commit
    files.write_json("summary.json", summary)
    (out / "DONE").write_text("")
    return summary


def summarise(files: RunFiles, status, reason, steps_done, diverged_step, wall_s, rl_wall_s) -> dict:
    rows = list(map(json.loads, files.metrics.read_text().splitlines()))
    evals = [r for r in rows if "eval/score" in r]
    scores = [r["eval/score"] for r in evals if not math.isnan(r["eval/score"])]
    return {
        "status": status, "reason": reason, "steps_done": steps_done, "diverged_step": diverged_step,
        "wall_s": wall_s, "rl_wall_s": rl_wall_s,
        "initial_eval_score": scores[0] if scores else None,
        "final_eval_score": scores[-1] if scores else None,
        "peak_eval_score": max(scores) if scores else None,
        # the world sizes the steps ran at (a run resumed at another train.world_size lists both)
        "world_sizes": sorted({r["perf/world_size"] for r in rows if "perf/world_size" in r}),
    }


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl_core.train", description=__doc__.split("\n")[0])
    C.add_config_args(ap)
    ap.add_argument("--out", required=True, type=Path, help="run directory")
    ap.add_argument("--meta-json", help="grid/figure/arm/label/seed of this run, written to meta.json")
    ap.add_argument("--step0-eval", type=Path, help="the init checkpoint's benchmark (rl_core.coldstart "
                    "eval): the step-0 eval row when made from the same weights, settings and code")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    named = [o.partition("=")[0].strip() for o in args.overrides]
    in_file = args.config and "cold_start" in (C.yaml_load(Path(args.config).read_text()) or {})  # a key
    if "cold_start" in named or in_file:
        init = cfg.init or "unset"
        raise C.ConfigError(f"cold_start={cfg.cold_start!r}: the trainer starts from init ({init})"
                            f" and never reads cold_start (it names the cold start the workflow passes as "
                            f"init); drop cold_start and give init=DIR of the checkpoint to start from")
    summary = run(cfg, args.out, json_arg("--meta-json", args.meta_json), args.step0_eval)
    if summary:  # rank 0 (the others return {})
        print(json.dumps(summary))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; a bad file or argument is one line on stderr and exit code 2 (rl_core.cli)."""
    return guard(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
