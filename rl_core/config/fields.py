"""The typed configuration tree: every field once, beside its default, its documentation and what it allows.

:func:`F` declares a field; the dataclasses below are the sections of a run's config (``RunConfig``).
rl_core.config builds and validates them from YAML, JSON and dotted overrides; rl_core.config.checks holds
the rules that tie fields together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rl_core.losses.knobs import READS


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
