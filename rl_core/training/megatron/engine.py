"""Megatron-core as the training engine (``train.engine: megatron``), and the HF <-> Megatron converter.

Read in this order (megatron-core 0.16.1):

* :func:`transformer_config_kwargs` / :func:`gpt_model_kwargs`: our Qwen3-MoE config.json as Megatron's
  ``TransformerConfig`` and ``GPTModel`` arguments (plain dicts: no megatron import needed to read them).
* :func:`build_gpt_model`: a ``GPTModel`` built with ``get_gpt_layer_local_spec(num_experts=E,
  moe_grouped_gemm=False, qk_layernorm=True, normalization="RMSNorm")`` (SequentialMLP experts, the
  allgather token dispatcher, no Transformer Engine), ``use_cpu_initialization=True`` and
  ``moe_enable_routing_replay=True``.
* :func:`hf_to_megatron` / :func:`megatron_to_hf` (rl_core.training.megatron.convert): the state-dict key
  mapping.
* :func:`megatron_route`: Megatron's router with replay on a bare tensor (the router check).
* The engine: :class:`MegatronPolicy` puts the GPTModel behind rl_core.policy.model.MoEPolicy's interface, so
  the run uses the torch engine's scoring (rl_core.training.scoring.token_logprobs: log-probs and entropy over
  the vocabulary, the same layout and temperature), objectives (rl_core.losses.objectives) and AdamW step
  (rl_core.step.update) unchanged; only the forward is Megatron's. R2 and R3 go through Megatron's own
  ``RouterReplay`` (:func:`partial_router_replay`): RECORD in the pi_old pass, REPLAY_FORWARD of the
  recorded (R2) or the rollout engine's (R3) routing in the updates. :func:`load_megatron` loads our HF
  checkpoint into it through the converter, after :func:`init_megatron` (a gloo group of world size 1
  when none exists, Megatron's parallel state and RNG tracker).
* Parallelism (``train.megatron_tp`` / ``megatron_ep``, launched with torchrun):
  rl_core.training.megatron.parallel slices the full checkpoint per rank, gathers full weights back
  (checkpoints, the rollout sync, evals, the final policy) and reduces gradients; Megatron's logits are
  gathered over the vocabulary (``parallel_output=False``), so scoring sees (B, T, V) on every rank. The ranks
  left over are data-parallel with rl_core.training.distributed's conventions (each scores and updates its
  share of the rows, normalised by the global counts; shares all-gathered), over Megatron's data-parallel
  group: TP ranks share their rows, EP ranks split them.

Where it departs from Megatron's own training loop, and why:

* Rows are left-aligned before the forward (:func:`_left_aligned`): Megatron's RoPE rotates by the column
  index, not by position ids, and our positions start at each row's first real token (left-padded
  prompts). The attention mask is causal AND real keys, passed explicitly.
* Replay rows of -1 (pads, tokens the rollout engine never ran, prompts under ``replay_prompt: false``)
  route naturally, and the natural top-k is recorded under replay as well (e_pi for the diagnostics):
  Megatron's REPLAY_FORWARD replays every row and records nothing, so the class extends it by one method.
* The optimizer is the torch engine's AdamW (rl_core.training.adamw: torch's, bitwise) on the GPTModel's
  parameters, not Megatron's DistributedOptimizer: the same step as the torch engine (what the comparison
  needs); AdamW is elementwise, so each rank steps its own slices. Optimizer state is checkpointed as full
  moments in our layout (any TP / EP resumes it).
* No sequence parallelism (Megatron's local norm spec refuses it without Apex or Transformer Engine), so
  under TP the MoE layers run in eval mode (MoELayer refuses training under TP without it, a performance
  guard) and every expert sees each TP rank's copy of a token: expert gradients are divided by TP.
* Under EP, a rank's rows are padded on the right to the widest among the EP ranks (the allgather
  dispatcher takes equal token counts from each).
* bf16 (``train.precision: bf16``, :class:`MegatronPolicy` with ``precision="bf16"``) is Megatron's own
  mixed precision, not autocast: the GPTModel is built with bf16 parameters (``TransformerConfig(bf16=True,
  params_dtype=bfloat16)``) and run through Megatron's ``Float16Module`` (bf16 inputs in, logits upcast to
  fp32 out), so every module computes in bf16, the residual stream included (Megatron's default
  ``fp32_residual_connection=False``), and the router in fp32 (``moe_router_dtype="fp32"``). The fp32 master
  weights are the engine's ``parameters()`` (what rl_core's AdamW steps, so its moments and the checkpoint
  layout are the fp32 engine's); each backward's bf16 gradients are added into fp32 main gradients on the
  masters (a post-accumulate hook, what Megatron's DDP ``main_grad`` buffer does) and each forward copies
  the masters into the bf16 parameters (what Megatron's optimizer does after a step). Over several ranks
  the TP / EP / DP gradient reductions and the global norm of rl_core.training.megatron.parallel act on the
  masters' fp32 gradients (each rank's bf16 gradients summed in fp32, as Megatron's DDP reduces main_grad).
  The torch engine's bf16 (rl_core.training.scoring) keeps an fp32 residual stream instead, so Megatron's
  bf16 is further from fp32 (tests/test_megatron.py bounds the ratio of the two distances).

Devices. On a CUDA GPU megatron-core runs as shipped. On a CPU 0.16.1 does not (its RNG tracker, RoPE,
router gating, the global memory buffer and the default causal mask call CUDA; ``router_gating_linear``
names ``te_general_gemm``, undefined without Transformer Engine). tests/megatron_cpu_shim.py maps those
calls to the CPU; only the tests install it (nothing in rl_core imports it), and without it
:func:`load_megatron` on a CPU stops with a ConfigError that says so. Measured on CPU through the shim
(tests/test_megatron.py, ``make test-megatron``): log-probs equal the torch engine's to 2.4e-7 (one ulp)
with no replay, R2, R3 and forced routing; gradients to 6e-7 of each tensor's largest; weights after a
global step of two AdamW updates (lr 1e-2) to 3.8e-5; a 4-step R2 arm's metrics to 1.3e-5 (relative).
2 gloo ranks against this engine in one process: at TP = 2 log-probs and entropy to 1.2e-6, weights after
a global step to 3.1e-5 (all but 2.6e-5 of them within 5e-6); at EP = 2 log-probs bitwise, weights to
2.6e-6; a 4-step arm at EP = 2 equals the torch engine's arm to 3.7e-6 (metrics, relative).

Routing equivalence: Qwen3's router (softmax over all experts, top-k, renormalise: ``norm_topk_prob``)
equals Megatron's ``moe_router_pre_softmax=False`` path (top-k of the logits, softmax over the k chosen),
because p_i / sum_{j in topk} p_j = exp(l_i) / sum_{j in topk} exp(l_j). Replay in Megatron
(``moe_enable_routing_replay``, ``RouterReplayAction.REPLAY_FORWARD``) gathers the live logits at the
forced ids and softmaxes them: the same live, renormalised gates as rl_core.policy.model.route.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rl_core.config import ConfigError
from rl_core.policy.model import PolicyOutput, config_value, from_hub_layout, load_pretrained
from rl_core.training.base import OWN_GRAD_REDUCTION, OWN_OPTIMIZER_STATE
from rl_core.training.megatron.convert import hf_to_megatron, megatron_to_hf
from rl_core.training.megatron.parallel import Layout, clip_grad_norm, gathered, local_slice, reduce_grads


def transformer_config_kwargs(hf_cfg: dict, params_dtype: torch.dtype = torch.float32) -> dict:
    """``megatron.core.transformer.TransformerConfig(**kwargs)`` for our Qwen3-MoE config.json."""
    return dict(
        num_layers=hf_cfg["num_hidden_layers"], hidden_size=hf_cfg["hidden_size"],
        num_attention_heads=hf_cfg["num_attention_heads"], num_query_groups=hf_cfg["num_key_value_heads"],
        kv_channels=hf_cfg["head_dim"], ffn_hidden_size=hf_cfg["intermediate_size"],
        moe_ffn_hidden_size=hf_cfg["moe_intermediate_size"],
        num_moe_experts=config_value(hf_cfg, "num_experts"),
        moe_router_topk=hf_cfg["num_experts_per_tok"], moe_router_pre_softmax=False,
        moe_router_score_function="softmax", moe_router_dtype="fp32", moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0, moe_enable_routing_replay=True, moe_token_dispatcher_type="allgather",
        normalization="RMSNorm", layernorm_epsilon=hf_cfg["rms_norm_eps"], qk_layernorm=True,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        add_qkv_bias=False, hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        params_dtype=params_dtype, bf16=params_dtype == torch.bfloat16)


def gpt_model_kwargs(hf_cfg: dict) -> dict:
    """The ``GPTModel`` arguments besides config and layer spec."""
    return dict(vocab_size=hf_cfg["vocab_size"], max_sequence_length=hf_cfg["max_position_embeddings"],
                position_embedding_type="rope", rotary_base=int(config_value(hf_cfg, "rope_theta")),
                share_embeddings_and_output_weights=bool(hf_cfg.get("tie_word_embeddings", False)),
                parallel_output=False)  # logits gathered over the vocabulary (tensor-parallel ranks)


def build_gpt_model(hf_cfg: dict, params_dtype: torch.dtype = torch.float32):
    """The Megatron GPTModel of this architecture (torch.distributed and parallel_state set up by the
    caller)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(**transformer_config_kwargs(hf_cfg, params_dtype))
    spec = get_gpt_layer_local_spec(num_experts=config.num_moe_experts, moe_grouped_gemm=False,
                                    qk_layernorm=True, normalization="RMSNorm")
    return GPTModel(config, spec, **gpt_model_kwargs(hf_cfg))


# ---------------------------------------------------------------------------------------- routing


def megatron_route(router, hidden: torch.Tensor, replay: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Route ``hidden`` (N, d) with a Megatron ``TopKRouter`` on CPU -> (probs (N, E), routing_map (N, E)).

    Runs Megatron's ``TopKRouter.routing`` with its routing-replay feature: ``replay`` (N, k) forces the
    experts (REPLAY_FORWARD), None routes naturally (RECORD, so the recorded ids can be read back).
    The gating linear is computed here as the fp32 ``hidden @ router.weight.T`` that Megatron's
    ``router_gating_linear`` computes with ``moe_router_dtype="fp32"``: neither runs on an unshimmed CPU in
    0.16.1 (``TopKRouter.gating`` moves the weight to CUDA; ``router_gating_linear`` without Transformer
    Engine raises ``NameError: name 'te_general_gemm' is not defined``). Megatron keeps its replay state in
    class-level globals (``RouterReplay.global_router_replay_instances``); the caller clears them.
    """
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    logits = torch.nn.functional.linear(hidden.float(), router.weight.float())
    if replay is None:
        router.router_replay.set_router_replay_action(RouterReplayAction.RECORD)
    else:
        router.router_replay.set_target_indices(replay)
        router.router_replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
    try:
        return router.routing(logits.unsqueeze(1))  # routing() takes [seq, batch, E]
    finally:
        router.router_replay.clear_router_replay_action()


# ----------------------------------------------------------------------------------- the engine


@functools.cache
def partial_router_replay() -> type:
    """Megatron's ``RouterReplay`` with the two things our replay schedule needs (a class made on first use,
    so importing this module needs no megatron):

    * rows of the target indices that hold -1 route naturally (pads, tokens the rollout engine never ran,
      prompts when ``replay.replay_prompt`` is false), as rl_core.policy.model.route does;
    * the natural top-k is recorded under replay too (``recorded_topk_idx``: e_pi, the diagnostics need
      it), and the ids actually used are kept in ``used_topk_idx``.

    Gates: the logits at the chosen ids, softmaxed over the k (``moe_router_pre_softmax=False``), the same
    live renormalised gates as route() (module docstring).
    """
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction

    class PartialRouterReplay(RouterReplay):
        used_topk_idx: torch.Tensor | None = None

        def get_replay_topk(self, scores, topk, num_groups=None, group_topk=None, default_compute_topk=None):
            _, natural = default_compute_topk(scores, topk, num_groups=num_groups, group_topk=group_topk)
            self.record_indices(natural)
            ids = natural
            if self.router_replay_action == RouterReplayAction.REPLAY_FORWARD:
                target = self.target_topk_idx.to(scores.device)
                ids = torch.where((target >= 0).all(-1, keepdim=True), target, natural)
            self.used_topk_idx = ids
            return scores.gather(1, ids), ids

    return PartialRouterReplay


def _left_aligned(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, T) -> cols (B, T) long: row b's real tokens moved to columns 0.. (``x.gather(1, cols)``).

    Megatron's RoPE takes positions 0..T-1 of the tensor, not position ids; our positions start at each
    row's first real token. Left-aligning makes the two the same. A row's real tokens must be contiguous
    (left-padded prompt, right-padded response)."""
    B, T = mask.shape
    lengths = mask.sum(1)
    first = mask.float().argmax(1)
    ar = torch.arange(T, device=mask.device)
    if not bool((mask.bool() == ((ar >= first[:, None]) & (ar < (first + lengths)[:, None]))).all()):
        raise ValueError("the Megatron engine needs each row's real tokens contiguous")
    return (ar[None] + first[:, None]) % T


class MegatronPolicy(torch.nn.Module):
    """Megatron-core's GPTModel behind the interface of rl_core.policy.model.MoEPolicy, so the torch engine's
    scoring (rl_core.training.scoring.token_logprobs), the objectives, AdamW and the run loop use it
    unchanged.

    ``forward(input_ids, attention_mask, replay) -> PolicyOutput`` (logits (B, T, V), routing and
    routing_natural (B, T, L, k), -1 and 0 at pads); routing record / replay through Megatron's RouterReplay
    (``moe_enable_routing_replay``): RECORD when ``replay`` is None, else REPLAY_FORWARD of ``replay``.
    ``parameters()`` are the GPTModel's (the optimizer steps them); ``state_dict()`` /
    ``load_state_dict()`` speak our layout (rl_core.policy.model), so checkpoints, the rollout engine's weight
    sync and save_pretrained need no Megatron.
    """

    capabilities = frozenset({OWN_GRAD_REDUCTION, OWN_OPTIMIZER_STATE})  # rl_core.training.base

    def __init__(self, hf_cfg: dict, gpt, precision: str = "fp32"):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision: {precision!r} is not one of ['fp32', 'bf16']")
        self.config = dict(hf_cfg)
        self.precision = precision
        self.gpt = gpt
        # bf16: Megatron's Float16Module around the bf16 GPTModel, fp32 master weights (module docstring).
        self._f16 = None
        self._names: list[str] = []
        self.master = torch.nn.ParameterList()
        if precision == "bf16":
            from megatron.core.transformer.module import Float16Module

            self._f16 = Float16Module(gpt.config, gpt)
            for name, p in gpt.named_parameters():
                self._names.append(name)
                master = torch.nn.Parameter(p.detach().float().clone())
                master.tensor_model_parallel = getattr(p, "tensor_model_parallel", False)  # a TP slice?
                self.master.append(master)
                p.register_post_accumulate_grad_hook(functools.partial(_into_main_grad, master))
        self.layout = Layout.current(config_value(hf_cfg, "num_experts"))
        self.routers = [layer.mlp.router for layer in gpt.decoder.layers]
        for router in self.routers:  # Megatron built one RouterReplay per router; ours replaces it
            router.router_replay = partial_router_replay()()
        self.train(self.training)

    def parameters(self, recurse: bool = True):
        """What the optimizer steps: the GPTModel's parameters (fp32), or the fp32 masters (bf16)."""
        return iter(self.master) if self._f16 is not None else self.gpt.parameters()

    def named_trained(self) -> list[tuple[str, torch.Tensor]]:
        """(GPTModel name, the tensor the optimizer steps) in GPTModel order."""
        if self._f16 is None:
            return list(self.gpt.named_parameters())
        return list(zip(self._names, self.master, strict=True))

    def _masters_to_model(self) -> None:
        """bf16: the fp32 masters rounded into the bf16 parameters (after every optimizer step, as Megatron
        copies its main parameters into the model's)."""
        if self._f16 is not None:
            with torch.no_grad():
                for (_, p), m in zip(self.gpt.named_parameters(), self.master, strict=True):
                    p.copy_(m)

    def train(self, mode: bool = True):
        """Under TP the MoE layers stay in eval mode: Megatron's MoELayer refuses training under TP without
        sequence parallelism (a performance guard; its local norm spec refuses sequence parallelism without
        Apex or Transformer Engine). Nothing in them differs between modes here (no dropout, aux loss,
        z-loss or jitter); the duplicated tokens this costs are accounted in
        rl_core.training.megatron.parallel.reduce_grads."""
        super().train(mode)
        if self.layout.tp > 1:
            for layer in self.gpt.decoder.layers:
                layer.mlp.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                replay: torch.Tensor | None = None) -> PolicyOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        T = input_ids.shape[1]
        pad = self._common_width(input_ids) - T
        if pad:  # pad columns on the right (masked; replay -1), cut off again below
            input_ids, attention_mask = (F.pad(x, (0, pad)) for x in (input_ids, attention_mask))
            replay = None if replay is None else F.pad(replay, (0, 0, 0, 0, 0, pad), value=-1)
        out = self._forward(input_ids, attention_mask, replay)
        return PolicyOutput(*(x[:, :T] for x in out)) if pad else out

    def _common_width(self, input_ids: torch.Tensor) -> int:
        """The widest T among the expert-parallel ranks: their data-parallel shares are scored with
        different widths (rl_core.training.scoring trims pad columns), but Megatron's allgather dispatcher
        takes equal token counts from every EP rank. A collective when EP > 1."""
        B, T = input_ids.shape
        if self.layout.ep == 1:
            return T
        sizes = torch.tensor([T, B, -B], device=input_ids.device)
        torch.distributed.all_reduce(sizes, op=torch.distributed.ReduceOp.MAX, group=self.layout.ep_group)
        if int(sizes[1]) != -int(sizes[2]):
            raise ValueError(f"the expert-parallel ranks score different numbers of rows ({B} here)")
        return int(sizes[0])

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 replay: torch.Tensor | None) -> PolicyOutput:
        from megatron.core.transformer.moe.router_replay import RouterReplayAction

        B, T = input_ids.shape
        cols = _left_aligned(attention_mask)
        ids, real = input_ids.gather(1, cols), attention_mask.gather(1, cols).bool()
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        masked = ~(causal[None] & real[:, None, :])[:, None]                       # (B, 1, T, T) True: hidden
        for i, router in enumerate(self.routers):
            if replay is None:
                router.router_replay.set_router_replay_action(RouterReplayAction.RECORD)
            else:  # Megatron's tokens are [seq, batch] flattened: row s * B + b
                target = replay.gather(1, cols[..., None, None].expand_as(replay))[:, :, i]
                router.router_replay.set_target_indices(target.transpose(0, 1).reshape(T * B, -1))
                router.router_replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
        positions = torch.arange(T, device=ids.device)[None].expand(B, T)
        try:
            if self._f16 is None:
                logits = self.gpt(ids, positions, masked)
            else:  # Megatron's own bf16, not the scorer's autocast (module docstring)
                self._masters_to_model()
                with torch.autocast(ids.device.type, enabled=False):
                    logits = self._f16(ids, positions, masked)
            used, natural = ([getattr(r.router_replay, name).view(T, B, -1).transpose(0, 1)
                              for r in self.routers] for name in ("used_topk_idx", "recorded_topk_idx"))
        finally:
            for router in self.routers:
                router.router_replay.clear_indices()
                router.router_replay.clear_router_replay_action()
        back = torch.argsort(cols, dim=1)  # the inverse permutation of each row

        def unalign(x: torch.Tensor, fill: float) -> torch.Tensor:  # (B, T, ...) aligned -> original columns
            x = torch.where(real.view(B, T, *[1] * (x.dim() - 2)), x, torch.full_like(x, fill))
            return x.gather(1, back.view(B, T, *[1] * (x.dim() - 2)).expand_as(x))

        return PolicyOutput(unalign(logits.float(), 0), unalign(torch.stack(used, 2), -1),
                            unalign(torch.stack(natural, 2), -1))

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The full weights in our layout (rl_core.policy.model's stacked experts), detached; under TP / EP
        the ranks' slices gathered (a collective: every rank calls it)."""
        masters = dict(self.named_trained()) if self._f16 is not None else {}
        own = {k: masters.get(k, v).detach() for k, v in self.gpt.state_dict().items()
               if torch.is_tensor(v) and not k.endswith("_extra_state")}
        if self.layout.parallel:
            own = gathered(own, self.layout)
        return from_hub_layout(megatron_to_hf(self.config, own))

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load full weights given in our layout (or the hub's) into the GPTModel: this rank's slices."""
        converted = local_slice(hf_to_megatron(self.config, state_dict), self.layout)
        out = self.gpt.load_state_dict({**self.gpt.state_dict(), **converted}, strict=strict)
        with torch.no_grad():
            for name, m in zip(self._names, self.master, strict=True):  # bf16: the fp32 masters, exactly
                m.copy_(converted[name])
        return out

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Gradients made the one-process step's over the ranks, then clipped by the global norm
        (rl_core.training.megatron.parallel); one process: torch's clip_grad_norm_."""
        if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
            return torch.nn.utils.clip_grad_norm_(list(self.parameters()), max_norm)
        named = self.named_trained()  # bf16: the fp32 masters, which hold the gradients (module docstring)
        reduce_grads(named, self.layout)
        return clip_grad_norm(named, max_norm, self.layout)

    def optimizer_state(self, opt) -> dict:
        """AdamW's moments as full tensors in our layout (gathered under TP / EP, a collective), so a
        checkpoint resumes at any tensor / expert-parallel size: {"step", "exp_avg", "exp_avg_sq"}."""
        if not opt.state:
            return {"step": 0.0}
        out = {"step": float(next(iter(opt.state.values()))["step"])}
        for key in ("exp_avg", "exp_avg_sq"):
            local = {n: opt.state[p][key] if p in opt.state else torch.zeros_like(p)
                     for n, p in self.named_trained()}
            if self.layout.parallel:
                local = gathered(local, self.layout)
            out[key] = from_hub_layout(megatron_to_hf(self.config, local))
        return out

    def load_optimizer_state(self, opt, state: dict) -> None:
        """The inverse of :meth:`optimizer_state`: this rank's slices of the moments into ``opt``."""
        if "exp_avg" not in state:
            return
        moments = {k: local_slice(hf_to_megatron(self.config, state[k]), self.layout)
                   for k in ("exp_avg", "exp_avg_sq")}
        for n, p in self.named_trained():
            opt.state[p] = {"step": torch.tensor(state["step"]),
                            **{k: m[n].clone() for k, m in moments.items()}}


def _into_main_grad(master: torch.Tensor, param: torch.Tensor) -> None:
    """A bf16 parameter's gradient, just accumulated, added into its fp32 master's (Megatron's main_grad)."""
    grad = param.grad.float()
    if master.grad is None:
        master.grad = grad
    else:
        master.grad.add_(grad)
    param.grad = None


def init_megatron(seed: int, tensor_parallel: int = 1, expert_parallel: int = 1) -> None:
    """torch.distributed (a gloo group of world size 1 when none exists: one process) and Megatron's
    parallel state at these sizes (the world left over is data-parallel) and RNG tracker, unless already
    set up. Under torchrun the caller joins the process group first
    (rl_core.training.distributed.from_env)."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                                 expert_model_parallel_size=expert_parallel)
    model_parallel_cuda_manual_seed(seed)


def load_megatron(path, seed: int = 0, device: torch.device | None = None, tensor_parallel: int = 1,
                  expert_parallel: int = 1, precision: str = "fp32") -> MegatronPolicy:
    """The checkpoint at ``path`` (our HF layout) as a :class:`MegatronPolicy` (fp32 parameters; bf16:
    bf16 parameters under Float16Module with fp32 masters), this rank's tensor- and expert-parallel slices
    of it (rl_core.training.megatron.parallel).

    On a CUDA GPU Megatron runs as shipped. On a CPU megatron-core 0.16.1 does not run as shipped (its
    RNG tracker, RoPE and router call CUDA); tests/megatron_cpu_shim.py, which only the tests install,
    maps those calls to the CPU. Without it a CPU run stops here with a ConfigError that says so.
    """
    device = torch.device("cpu") if device is None else device
    try:
        init_megatron(seed, tensor_parallel, expert_parallel)
    except (AssertionError, RuntimeError) as e:
        if device.type == "cuda":
            raise
        raise ConfigError(f"train.engine='megatron': megatron-core needs a CUDA GPU here ({e}); on a CPU it "
                          f"runs only under the test shim tests/megatron_cpu_shim.py (make test-megatron)"
                          ) from None
    torch_policy = load_pretrained(path)
    if torch_policy.config["vocab_size"] % tensor_parallel:
        raise ConfigError(f"train.megatron_tp: {tensor_parallel} does not divide the checkpoint's vocabulary "
                          f"({torch_policy.config['vocab_size']} tokens, {path}): Megatron splits it evenly")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    policy = MegatronPolicy(torch_policy.config, build_gpt_model(torch_policy.config, dtype), precision)
    policy.load_state_dict(torch_policy.state_dict())
    return policy.to(device)


__all__ = ["transformer_config_kwargs", "gpt_model_kwargs", "build_gpt_model", "hf_to_megatron",
           "megatron_to_hf", "megatron_route", "partial_router_replay", "MegatronPolicy", "init_megatron",
           "load_megatron"]
