"""The rules that tie a resolved config's fields together (one field's own type and range is checked where it
is built): a setting that would change nothing, or that the run could not honour, is refused here, naming
the key, its value and what is allowed.
"""

from __future__ import annotations

from rl_core.config.fields import ConfigError, LossConfig, RunConfig, TaskConfig
from rl_core.losses.knobs import KNOBS, READS, readers


def cross_checks(cfg: RunConfig) -> None:
    """Every rule between fields, in turn (rl_core.config.from_dict calls it on each config it builds)."""
    m = cfg.model
    if m.num_attention_heads % m.num_key_value_heads:
        raise ConfigError(f"model.num_key_value_heads: {m.num_key_value_heads} must divide "
                          f"model.num_attention_heads={m.num_attention_heads}")
    if m.num_experts_per_tok > m.num_experts:
        raise ConfigError(f"model.num_experts_per_tok: {m.num_experts_per_tok} exceeds "
                          f"model.num_experts={m.num_experts}")
    _megatron_checks(cfg)
    _task_checks(cfg)
    if cfg.rollout.weight_sync == "checkpoint" and cfg.rollout.precision != "fp8":
        raise ConfigError(f"rollout.weight_sync: 'checkpoint' writes the block-FP8 checkpoint of "
                          f"rollout.precision=fp8 (this run samples in {cfg.rollout.precision!r}, which has "
                          f"no "
                          f"checkpoint format here); allowed here: 'memory'")
    if cfg.task.max_operands < cfg.task.min_operands:
        raise ConfigError(f"task.max_operands: {cfg.task.max_operands} < task.min_operands")
    if not cfg.task.ops or set(cfg.task.ops) - set("+-*"):
        raise ConfigError(f"task.ops: {cfg.task.ops!r} must be a non-empty subset of '+-*'")
    for low, high in (("icepop_low", "icepop_high"), ("seq_mis_low", "seq_mis_high")):
        if getattr(cfg.loss, low) >= getattr(cfg.loss, high):
            raise ConfigError(f"loss.{low}: {getattr(cfg.loss, low)} is not below "
                              f"loss.{high}={getattr(cfg.loss, high)} (the band would be empty)")
    _knob_checks(cfg.loss)
    if cfg.train.steps % cfg.train.n_minibatches:
        raise ConfigError(f"train.steps: {cfg.train.steps} is not a multiple of "
                          f"train.n_minibatches={cfg.train.n_minibatches}")
    if cfg.eval.n_problems > cfg.task.n_bench:
        raise ConfigError(f"eval.n_problems: {cfg.eval.n_problems} exceeds task.n_bench={cfg.task.n_bench} "
                          f"(the benchmark has only that many problems)")
    longest = prompt_length_bound(cfg.task) + cfg.rollout.max_new_tokens
    if longest > m.max_position_embeddings:
        why = ("task.max_prompt_tokens" if cfg.task.kind == "file" else
               f"task.max_operands={cfg.task.max_operands}, task.max_operand={cfg.task.max_operand}")
        raise ConfigError(f"rollout.max_new_tokens: {cfg.rollout.max_new_tokens} + the longest prompt "
                          f"({prompt_length_bound(cfg.task)} tokens at {why}) = {longest} "
                          f"exceeds model.max_position_embeddings={m.max_position_embeddings}")


def _megatron_checks(cfg: RunConfig) -> None:
    """Tensor / expert-parallel sizes: only the Megatron engine reads them, and they must split the model."""
    t, m = cfg.train, cfg.model
    for key, value in (("megatron_tp", t.megatron_tp), ("megatron_ep", t.megatron_ep)):
        if value != 1 and t.engine != "megatron":
            raise ConfigError(f"train.{key}: {value} applies only to train.engine=megatron (this run trains "
                              f"with {t.engine!r}); allowed here: 1")
    if t.compile and t.engine != "torch":
        raise ConfigError(f"train.compile: true compiles the torch engine's layers (this run trains with "
                          f"{t.engine!r}, which has its own kernels); allowed here: false")
    for key, value, divides in (("megatron_tp", t.megatron_tp, ("num_attention_heads", "num_key_value_heads",
                                                                  "moe_intermediate_size")),
                                ("megatron_ep", t.megatron_ep, ("num_experts",))):
        for name in divides:
            n = getattr(m, name)
            if n % value:
                allowed = [d for d in range(1, n + 1) if all(getattr(m, x) % d == 0 for x in divides)]
                raise ConfigError(f"train.{key}: {value} does not divide model.{name}={n}; "
                                  f"allowed: {allowed}")
    if t.world_size > 1 and t.compile:
        raise ConfigError(f"train.compile: true runs in one process (train.world_size={t.world_size}: "
                          f"FSDP-sharded compiled layers are not tested here); allowed: false")
    if t.world_size % (t.megatron_tp * t.megatron_ep):
        raise ConfigError(f"train.world_size: {t.world_size} is not a multiple of train.megatron_tp x "
                          f"train.megatron_ep = {t.megatron_tp} x {t.megatron_ep}")
    dp = t.world_size // t.megatron_tp
    if t.batch_prompts % dp:
        raise ConfigError(f"train.batch_prompts: {t.batch_prompts} does not split over the {dp} "
                          f"data-parallel ranks (train.world_size={t.world_size} / train.megatron_tp="
                          f"{t.megatron_tp}); use a multiple of {dp}")


def _knob_checks(loss: LossConfig) -> None:
    """A loss.* knob set away from its default under an objective that does not read it is refused
    (rl_core.losses.knobs.READS says who reads what)."""
    defaults = LossConfig()
    for knob in KNOBS:
        if knob not in READS[loss.objective] and getattr(loss, knob) != getattr(defaults, knob):
            raise ConfigError(
                f"loss.{knob}: {getattr(loss, knob)!r} is set, but loss.objective={loss.objective!r} does "
                f"not read it (it reads {['loss.' + k for k in READS[loss.objective]] or 'none of them'}); "
                f"loss.{knob} is read by {readers(knob)}: drop it (or leave it at its default "
                f"{getattr(defaults, knob)!r}) or pick one of those objectives")


#: The task fields only ``task.kind: file`` reads (TaskConfig's docs: "the fields from train_file on").
FILE_TASK_FIELDS = ("train_file", "bench_file", "prompt_key", "answer_key", "prompt_template",
                    "chat_template", "max_prompt_tokens")


def _task_checks(cfg: RunConfig) -> None:
    t = cfg.task
    if t.kind != "file":
        defaults = TaskConfig()
        if set_ := [k for k in FILE_TASK_FIELDS if getattr(t, k) != getattr(defaults, k)]:
            raise ConfigError(f"task.{set_[0]}: set ({', '.join('task.' + k for k in set_)}) but only "
                              f"task.kind=file reads it, and task.kind is {t.kind!r}; set task.kind: file "
                              f"(or drop the field)")
        return
    for key in ("train_file", "bench_file"):
        path = getattr(t, key)
        if not path:
            raise ConfigError(f"task.{key}: task.kind is file, so it needs a JSONL or Parquet file")
        if not path.endswith((".jsonl", ".json", ".parquet")):
            raise ConfigError(f"task.{key}: {path!r} is neither JSONL (.jsonl, .json) nor Parquet (.parquet)")
    if "{prompt}" not in t.prompt_template:
        raise ConfigError(f"task.prompt_template: {t.prompt_template!r} has no {{prompt}}")


def prompt_length_bound(task: TaskConfig) -> int:
    """Most tokens a prompt of rl_core.tasks can have. file: task.max_prompt_tokens (longer rows are
    dropped). arithmetic (one character = one token): ``Q:`` + the first operand (at most min(max_operand,
    max_value)) + per further operand an operator and at most max(digits of max_operand, 1) digits (a
    ``*`` operand is one digit) + ``=``. tests/test_config.py checks it against drawn prompts."""
    if task.kind == "file":
        return task.max_prompt_tokens
    first = len(str(min(task.max_operand, task.max_value)))
    later = 1 + max(len(str(task.max_operand)), 1)
    return 2 + first + (task.max_operands - 1) * later + 1
