"""One typed configuration tree for a run (one arm, one seed).

Every field is declared once, beside its default and its documentation. YAML files and dotted command-line
overrides (``loss.is_cap=5``) only override; unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key, the value and what is allowed. The resolved config serialises to JSON
and to a flat ``{"section.key": value}`` dict (MLflow params), and both round-trip.

This module imports no torch: the workflow validates grids with it while Snakemake builds the DAG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl_core.losses.knobs import KNOBS, READS, readers


class YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-3` as a string, researchers write it."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (PyYAML would silently keep the last one)."""

    def __init__(self, key: Any, line: int, first_line: int):
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"line {line}: duplicate key '{key}' (first given on line {first_line})")


class StrictYamlLoader(YamlLoader):
    """YamlLoader that refuses a key given twice in one mapping, naming the line of each.

    A ``<<`` merge key may still bring keys that the mapping then overrides (that is what merges are for).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep)


def yaml_load(text: str):
    """YAML 1.2 floats; a duplicate key raises DuplicateKeyError (a yaml.YAMLError) naming its line."""
    return yaml.load(text, Loader=StrictYamlLoader)


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and what is allowed."""


def F(default: Any, doc: str, *, choices: tuple | None = None, ge: float | None = None,
      gt: float | None = None, le: float | None = None) -> Any:
    """A documented field: default, one-line doc, optional allowed values or numeric bounds."""
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le}
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """Architecture of the tiny Qwen3-MoE policy (used when a base model is built from scratch)."""

    hidden_size: int = F(128, "Residual stream width.", ge=8)
    num_hidden_layers: int = F(4, "Decoder layers; every layer is an MoE layer.", ge=1)
    num_attention_heads: int = F(4, "Query heads.", ge=1)
    num_key_value_heads: int = F(2, "Key/value heads (GQA); divides the query heads.", ge=1)
    head_dim: int = F(32, "Width of one attention head.", ge=2)
    num_experts: int = F(8, "Routed experts per MoE layer.", ge=1)
    num_experts_per_tok: int = F(2, "Top-k experts chosen per token.", ge=1)
    moe_intermediate_size: int = F(128, "Hidden width of one SwiGLU expert.", ge=1)
    rope_theta: float = F(10000.0, "RoPE base frequency.", gt=0)
    max_position_embeddings: int = F(256, "Longest sequence (prompt + response).", ge=8)
    rms_norm_eps: float = F(1e-6, "RMSNorm epsilon.", gt=0)
    init_std: float = F(0.02, "Std of the normal init of linear and embedding weights.", gt=0)


@dataclass
class TaskConfig:
    """The verifiable task and its held-out benchmark (rl_core.tasks). ``kind: arithmetic`` (the default)
    draws left-to-right arithmetic chains from the seed and uses the char-level tokenizer; ``kind: file``
    reads prompts and reference answers from local JSONL/Parquet files, encodes them with the init
    checkpoint's own tokenizer and chat template, and rewards with a math verifier (math-verify)."""

    kind: str = F("arithmetic", "Task family: arithmetic (generated, char tokenizer; the fields up to seed) "
                  "or file (train_file / bench_file with the init checkpoint's tokenizer; the fields from "
                  "train_file on).", choices=("arithmetic", "file"))
    min_operands: int = F(2, "Fewest operands in a problem (level = operands - 1).", ge=2)
    max_operands: int = F(4, "Most operands in a problem.", ge=2)
    max_operand: int = F(20, "Largest operand of '+' and '-' (a '*' operand is one digit, 2..9).", ge=1)
    max_value: int = F(200, "Largest partial result: operands are drawn so no running value exceeds it.",
                       ge=1)
    ops: str = F("+-*", "Operators that may appear (subset of '+-*').")
    n_train: int = F(4096, "Training prompts (a fixed set drawn from the seed; repeats only where a "
                     "level's problem space is smaller than its share). file: at most this many rows, "
                     "from the top of train_file.", ge=1)
    n_bench: int = F(256, "Held-out benchmark prompts: distinct, none of them a training prompt. file: at "
                     "most this many rows, from the top of bench_file.", ge=1)
    seed: int = F(1234, "Seed of the problem sets (shared by every arm of a grid).", ge=0)
    train_file: str = F("", "file: training problems, one per row: JSONL (.jsonl, .json) or Parquet "
                        "(.parquet); read once, locally (nothing is downloaded).")
    bench_file: str = F("", "file: held-out benchmark problems (avg@k on its first eval.n_problems rows), "
                        "same format; keep it disjoint from train_file.")
    prompt_key: str = F("prompt", "file: column of the prompt: a string, or a chat (a list of {role, "
                        "content} messages, as in verl's Parquet files); a dotted name reaches into nested "
                        "objects.")
    answer_key: str = F("answer", "file: column of the reference answer (a number or LaTeX, compared with "
                        "the response's final answer by math-verify); a dotted name reaches into nested "
                        "objects, e.g. reward_model.ground_truth.")
    prompt_template: str = F("{prompt}", "file: the user message; {prompt} is replaced by the row's prompt "
                             "string, e.g. '{prompt} Put your final answer within \\boxed{}.' (a chat "
                             "prompt is used as it is).")
    chat_template: bool = F(True, "file: wrap the messages in the tokenizer's chat template with the "
                            "generation prompt (when the tokenizer has one); false: the bare user message.")
    max_prompt_tokens: int = F(512, "file: longest prompt in tokens; longer rows are dropped (counted on "
                               "stderr). Bounds prompt + rollout.max_new_tokens against "
                               "model.max_position_embeddings.", ge=1)


@dataclass
class RolloutConfig:
    """The engine that samples (mu_old)."""

    engine: str = F("embedded", "Rollout backend.", choices=("embedded", "vllm"))
    precision: str = F("bf16", "Number format of the rollout engine, named after what servers run: fp32; "
                       "bf16; fp8 = W8A8 e4m3, 128x128 weight blocks, per-token 1x128 activation groups "
                       "(Qwen's FP8 checkpoints); fp8_w8a16 = e4m3 weights, one scale per output channel, "
                       "bf16 activations; mxfp4 = W4A16, OCP MX e2m1 with an e8m0 scale per 32 inputs "
                       "(gpt-oss). Router, embeddings and lm_head stay bf16 (fp32 at fp32).",
                       choices=("fp32", "bf16", "fp8", "fp8_w8a16", "mxfp4"))
    kv_cache: str = F("auto", "KV cache format: auto = the compute precision (vLLM's kv_cache_dtype=auto); "
                      "fp8 = e4m3 with a per-tensor scale of 1.0 (vLLM's kv_cache_dtype=fp8 without "
                      "calibrated scales).", choices=("auto", "fp8"))
    weight_sync: str = F("memory", "How the trainer's weights reach the rollout engine: memory (the engine "
                         "quantises them itself) or checkpoint (fp8 only: the sync writes a block-FP8 "
                         "checkpoint in the format of Qwen's FP8 releases, e4m3 weights with a "
                         "weight_scale_inv per 128x128 block and quantization_config {quant_method: fp8, "
                         "weight_block_size: [128, 128], activation_scheme: dynamic}, and the engine loads "
                         "it: the embedded engine bitwise as from memory, vLLM's GPU build with its "
                         "block-FP8 "
                         "kernels; every quantised width must be a multiple of 128).",
                         choices=("memory", "checkpoint"))
    temperature: float = F(1.0, "Sampling temperature (both engines score with the same temperature).", gt=0)
    max_new_tokens: int = F(80, "Response length limit.", ge=1)
    group_size: int = F(8, "G: responses sampled per prompt.", ge=2)


@dataclass
class TrainConfig:
    """The engine that trains (pi_old, pi_theta) and the optimisation schedule."""

    engine: str = F("torch", "Training backend.", choices=("torch", "megatron"))
    precision: str = F("fp32", "Training engine precision: fp32 (the exact reference) or bf16 the way "
                       "Megatron trains (bf16 matmuls and attention; fp32 master weights, optimizer state, "
                       "RMSNorm, router softmax, log-softmax and loss).", choices=("fp32", "bf16"))
    batch_prompts: int = F(8, "B: prompts per mini-batch (a mini-batch holds B x G responses).", ge=1)
    n_minibatches: int = F(1, "N: mini-batches (optimizer steps) per rollout batch; 1 is on-policy.", ge=1)
    steps: int = F(60, "Gradient steps in the run (a multiple of N).", ge=1)
    lr: float = F(1e-3, "AdamW learning rate.", gt=0)
    beta1: float = F(0.9, "AdamW beta1.", ge=0, le=1)
    beta2: float = F(0.99, "AdamW beta2.", ge=0, le=1)
    weight_decay: float = F(0.0, "AdamW decoupled weight decay.", ge=0)
    grad_clip: float = F(1.0, "Max global gradient norm (0 disables).", ge=0)
    seed: int = F(0, "Seed of prompt order, sampling and init.", ge=0)
    threads: int = F(1, "torch intra-op threads of this run.", ge=1)
    log_samples: int = F(4, "Rollout samples kept in RUN_DIR/samples.jsonl (rl_core.samples): each global "
                         "step's first this many rollouts (prompt, response, reward; per token the "
                         "train-inference log-ratio, IS weight and clip mask) and each benchmark's first "
                         "response to its first this many problems (at most 8). The first rows, not a random "
                         "draw: the numbers do not change. 0: none.", ge=0)
    compile: bool = F(False, "torch.compile (inductor) the torch engine's decoder layers: fused elementwise "
                      "kernels, faster updates and pi_old passes (make bench: ours vs ours compiled), for a "
                      "one-off compile of each graph per process (tens of CPU seconds; inductor's on-disk "
                      "cache shortens later ones), so it pays on long runs. Fused kernels round differently "
                      "from eager ones (within fp32/bf16 rounding), so compiled and eager runs are not "
                      "bitwise equal. In fp32 the experts' grouped matmuls stay eager. One process only; "
                      "not with train.engine=megatron.")
    device: str = F("auto", "Where the policy, the batch and the embedded rollout engine live: auto = "
                    "cuda when torch sees a GPU, else cpu (the resolved device is recorded in summary.json "
                    "and every metric row); cuda without a GPU is refused before any work. Under torchrun "
                    "each rank takes cuda:LOCAL_RANK.", choices=("auto", "cpu", "cuda"))
    world_size: int = F(1, "Processes (ranks) that train this arm: 1 = one process; W > 1 = W data-parallel "
                        "ranks under torchrun (FSDP2 for the torch engine; tensor / expert / data parallel "
                        "for megatron), which the workflow launches (`python -m torch.distributed.run "
                        "--nproc-per-node W --standalone`; on SLURM one task with W x train.threads CPUs "
                        "and, for a GPU arm, W GPUs on one node). The trainer refuses a WORLD_SIZE that "
                        "differs. A "
                        "launch setting, not a result: a checkpoint resumes at another world size (the "
                        "resume identity leaves it out), and every metric row and summary.json record the "
                        "world size they ran at.", ge=1)
    megatron_tp: int = F(1, "train.engine=megatron only: tensor-parallel size (attention heads, query "
                         "groups, vocabulary and each expert's FFN split over this many torchrun ranks); "
                         "must divide model.num_key_value_heads, model.moe_intermediate_size and the "
                         "world size.", ge=1)
    megatron_ep: int = F(1, "train.engine=megatron only: expert-parallel size (each rank holds "
                         "num_experts / megatron_ep experts); must divide model.num_experts and, times "
                         "megatron_tp, the world size. The ranks left over (world / (tp x ep) x ep for "
                         "attention) are data-parallel.", ge=1)


@dataclass
class LossConfig:
    """The objective (docs/objective.md §3-§6): `objective` names an entry of rl_core.losses.objectives."""

    objective: str = F("minirl", "Objective by name (rl_core.losses.objectives' paper index says which "
                       "source each follows; rl_core.losses.knobs which loss.* knobs each reads: setting "
                       "another objective's knob is refused).", choices=tuple(READS))
    is_cap: float = F(5.0, "C: truncation of the detached token IS weight (and of seq_tis's sequence "
                      "weight).", gt=0)
    is_cap_on: str = F("full", "What the cap truncates: the full ratio pi_theta/mu_old or only the "
                       "discrepancy factor pi_old/mu_old.", choices=("full", "discrepancy"))
    eps_low: float = F(0.2, "Clip range below 1 (tokens with A<0).", ge=0, le=1)
    eps_high: float = F(0.27, "Clip range above 1 (tokens with A>0).", ge=0)
    icepop_low: float = F(0.5, "icepop: alpha, tokens with pi_old/mu_old below it get no gradient "
                          "(IcePop's 0.5).", gt=0)
    icepop_high: float = F(5.0, "icepop: beta, tokens with pi_old/mu_old above it get no gradient "
                           "(IcePop's 5).", gt=0)
    seq_ratio: str = F("geometric", "seq_mis: the sequence ratio of pi_old/mu_old it bands and weights "
                       "(also reported as seq/ratio_log_std): geometric mean or product over the "
                       "response's tokens.", choices=("geometric", "product"))
    seq_mis_low: float = F(0.98, "seq_mis: a response whose sequence ratio is below it is dropped (set for "
                           "geometric means of ~20-token responses; the sources' 0.999 is for thousands "
                           "of tokens).", gt=0)
    seq_mis_high: float = F(1.02, "seq_mis: a response whose sequence ratio is above it is dropped.", gt=0)
    gspo_eps_low: float = F(3e-4, "gspo: clip range below 1 of the sequence ratio (the GSPO paper's).",
                            ge=0, le=1)
    gspo_eps_high: float = F(4e-4, "gspo: clip range above 1 of the sequence ratio (the GSPO paper's).",
                             ge=0)
    cispo_norm: str = F("group", "cispo's normaliser: group = each group's tokens (MiniMax-M1's formula); "
                        "token_mean = the mini-batch's tokens (verl).", choices=("group", "token_mean"))


@dataclass
class ReplayConfig:
    """MoE routing replay (docs/objective.md §5)."""

    mode: str = F("none", "none; r2: replay the training engine's old routing; r3: replay the rollout "
                  "engine's routing.", choices=("none", "r2", "r3"))
    replay_prompt: bool = F(True, "Also replay the routing of prompt (prefill) tokens.")


@dataclass
class EvalConfig:
    """The held-out benchmark (avg@k)."""

    every: int = F(10, "Benchmark every this many gradient steps (and at steps 0 and the last).", ge=1)
    k: int = F(4, "Samples per benchmark problem (avg@k).", ge=1)
    n_problems: int = F(128, "Benchmark problems used (the first n of the benchmark set).", ge=1)
    temperature: float = F(1.0, "Sampling temperature of the benchmark.", gt=0)


@dataclass
class PipelineConfig:
    """Base pretraining and the SFT cold starts (rl_core.coldstart; RL runs ignore it)."""

    pretrain_steps: int = F(900, "Next-token steps of base pretraining.", ge=0)
    sft_steps: int = F(400, "SFT steps of each cold start on its teacher's solutions (400: the `chain` cold "
                       "start then starts at the paper's score and train-inference KL; docs/results.md, "
                       "\"The starting regime\").", ge=0)
    batch_size: int = F(64, "Sequences per pretraining/SFT step.", ge=1)
    lr: float = F(3e-3, "Peak AdamW learning rate of pretraining (warm-up 5%, cosine to 10%).", gt=0)
    sft_lr: float = F(1e-3, "Peak AdamW learning rate of SFT (2e-3 already erodes the base's arithmetic).",
                      gt=0)
    seed: int = F(0, "Seed of the base's init and of pretraining/SFT data and order.", ge=0)


@dataclass
class RunConfig:
    """Everything one run (one arm, one seed) needs."""

    cold_start: str = F("chain", "SFT cold start (teacher) the run starts from; the workflow fills `init`.",
                        choices=("terse", "chain", "scratchpad"))
    init: str = F("", "Initial policy: a Hugging Face checkpoint directory (a cold start).")
    checkpoint_every: int = F(20, "Save a resumable checkpoint every this many gradient steps.", ge=1)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


# ----------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, value: Any, f: dataclasses.Field, tp: Any) -> Any:
    """Coerce (int -> float only) and validate one leaf value; raise ConfigError naming `key`."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {list(m['choices'])}")
    for bound, ok_fn, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<=")):
        if m.get(bound) is not None and not ok_fn(value, m[bound]):
            raise ConfigError(f"{key}: {value!r} is out of range (must be {word} {m[bound]})")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (allowed in "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", value, fields[name], tp)
    return cls(**kwargs)


def _cross_checks(cfg: RunConfig) -> None:
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


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; `over` wins. Inputs are not modified."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{p}' is a value, not a section")
        node[leaf] = value
    return out


def _hint(key: str) -> Any:
    """The declared type of a dotted RunConfig key (None when no field has that name: from_dict names it)."""
    cls: Any = RunConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return None
        cls = typing.get_type_hints(cls)[part]
    return cls


def _override_value(key: str, raw: str) -> Any:
    """A command-line value. A ``str`` field takes the text as written (YAML would read the README's own
    ``{prompt} ... \\boxed{}`` as a broken flow mapping, ``*`` as an alias), unless it is a quoted YAML
    string; any other field parses it as a YAML scalar, and a value that is not one is named."""
    if not raw.strip():
        return ""
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as e:
        if _hint(key) is str:
            return raw
        first = " ".join(str(e).split())[:160]
        raise ConfigError(f"override {key}: {raw!r} is not a YAML value ({first}); quote a string") from None
    if _hint(key) is str and not isinstance(value, str):
        return raw
    return value


def parse_overrides(items: list[str]) -> dict:
    """["loss.is_cap=5", "replay.mode=r3"] -> nested dict; values as :func:`_override_value` reads them."""
    flat = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. loss.is_cap=5")
        flat[key.strip()] = _override_value(key.strip(), raw)
    return unflatten(flat)


def from_dict(data: dict) -> RunConfig:
    """Validate a (partial) nested dict over the defaults and return the typed config."""
    cfg = _build(RunConfig, data)
    _cross_checks(cfg)
    return cfg


def resolve(*layers: dict, overrides: list[str] = ()) -> RunConfig:
    """defaults <- layer 1 <- layer 2 ... <- dotted overrides."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer or {})
    return from_dict(deep_merge(merged, parse_overrides(list(overrides))))


def load(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML (or JSON) config file plus dotted overrides."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return resolve(data, overrides=overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


# ------------------------------------------------------------------------------------ serialising


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: RunConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_json(text: str) -> RunConfig:
    return from_dict(json.loads(text))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict (or config) -> {"section.key": value} (MLflow params)."""
    if dataclasses.is_dataclass(d):
        d = to_dict(d)
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_flat(flat: dict[str, Any]) -> RunConfig:
    return from_dict(unflatten(flat))


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()[:12]


#: Fields that say how a run is launched, not what it computes to within rounding: a run directory and its
#: checkpoints are the same run whatever they are (rl_core.rundir.set_aside, the checkpoint's resume hash).
LAUNCH_KEYS = ("train.world_size",)


def resume_identity(config: RunConfig | dict) -> dict:
    """The config as a nested dict without :data:`LAUNCH_KEYS`: what a resumed run must share with the run
    it resumes (a checkpoint written at one world size resumes at another)."""
    flat = flatten(config if isinstance(config, dict) else to_dict(config))
    return unflatten({k: v for k, v in flat.items() if k not in LAUNCH_KEYS})


def resume_hash(cfg: RunConfig) -> str:
    """:func:`config_hash` of :func:`resume_identity`: the checkpoint's config hash."""
    text = json.dumps(resume_identity(cfg), indent=2, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every leaf field: the config reference, generated."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.default, f.metadata.get("doc", "")))
    return rows


__all__ = ["ConfigError", "RunConfig", "ModelConfig", "TaskConfig", "RolloutConfig", "TrainConfig",
           "LossConfig", "ReplayConfig", "EvalConfig", "resolve", "load", "from_dict", "to_dict",
           "to_json", "from_json", "flatten", "from_flat", "parse_overrides", "deep_merge",
           "config_hash", "resume_identity", "resume_hash", "LAUNCH_KEYS", "describe"]


# ------------------------------------------------------------------------------------- command line


def add_config_args(parser) -> None:
    """The config options every entry point shares: a file, an inline JSON, dotted overrides."""
    parser.add_argument("--config", help="YAML or JSON config file (a partial tree over the defaults)")
    parser.add_argument("--config-json", help="the same, inline as a JSON string (used by the workflow)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied last, e.g. loss.is_cap=5 replay.mode=r3")


def config_from_args(args) -> RunConfig:
    """Resolve defaults <- --config file <- --config-json <- overrides; errors name the key."""
    layers = []
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        try:
            layers.append(yaml_load(path.read_text()) or {})
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if args.config_json:
        layers.append(json.loads(args.config_json))
    return resolve(*layers, overrides=args.overrides)
