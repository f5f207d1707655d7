"""Devices and data parallelism (rl_core.training.distributed).

Invariance (the TRL habit: configurations that must agree): FSDP2 over 2 ranks (gloo, CPU), each scoring
and updating half of every mini-batch, gives the update of 1 process on the whole mini-batch, to fp32
tolerance: the same weights after an off-policy global step (N = 2 mini-batches, so the pi_old pass and
mini-batch 1's pi_old-from-its-update both run) and the same metrics, for MiniRL with no replay, R2 and R3,
and for CISPO with the token-mean normaliser (the global token count, LossParams.n_tokens).
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from rl_core import config as C
from rl_core.losses.objectives import ADVANTAGES, OBJECTIVES, LossParams
from rl_core.orchestration.capabilities import Environment, check_capabilities
from rl_core.policy.model import MoEPolicy, hf_config
from rl_core.rollout.embedded import EmbeddedRolloutEngine
from rl_core.step import Sampled, score, update
from rl_core.training import distributed as D

TINY = {"model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32},
        "rollout": {"group_size": 2, "max_new_tokens": 6, "precision": "bf16"},
        "train": {"batch_prompts": 2, "n_minibatches": 2, "lr": 1e-2}}
CASES = {"minirl/none": {}, "minirl/r2": {"replay": {"mode": "r2"}}, "minirl/r3": {"replay": {"mode": "r3"}},
         "cispo_token_mean/none": {"loss": {"objective": "cispo", "cispo_norm": "token_mean"}}}
VOCAB, EOS, PAD = 24, 1, 0


def case_config(case: str) -> C.RunConfig:
    return C.resolve(TINY, CASES[case])


def sampled_batch(cfg: C.RunConfig) -> Sampled:
    """4 prompts x G = 2 responses from a bf16 embedded engine of the seed-0 policy, seeded rewards."""
    policy = MoEPolicy(hf_config(cfg.model, VOCAB, EOS, PAD), seed=0)
    engine = EmbeddedRolloutEngine.from_model(policy, cfg.rollout.precision)
    gen = torch.Generator().manual_seed(3)
    n, G = cfg.train.n_minibatches * cfg.train.batch_prompts, cfg.rollout.group_size
    prompts = [torch.randint(2, VOCAB, (3 + i % 3,), generator=gen).tolist()
               for i in range(n) for _ in range(G)]
    ro = engine.generate(prompts, cfg.rollout.max_new_tokens, 1.0, gen)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])[: len(ro)]
    return Sampled(ro, rewards, ADVANTAGES[OBJECTIVES[cfg.loss.objective].advantage](rewards, G))


def global_step(cfg: C.RunConfig, sampled: Sampled, ranks: D.Ranks, policy=None) -> tuple[dict, list[dict]]:
    """Score and N updates from ``policy`` (default: the seed-0 MoEPolicy); returns (full weights after,
    metrics per update)."""
    torch.manual_seed(0)
    policy = D.shard(MoEPolicy(hf_config(cfg.model, VOCAB, EOS, PAD), seed=0) if policy is None else policy,
                     ranks)
    t = cfg.train
    opt = torch.optim.AdamW(policy.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),
                            weight_decay=t.weight_decay)
    mb = t.batch_prompts * cfg.rollout.group_size
    params = LossParams.from_config(cfg.loss, float(mb), group_size=cfg.rollout.group_size)
    objective = OBJECTIVES[cfg.loss.objective]
    batch = score(cfg, policy, sampled, ranks)
    rows = []
    for j in range(t.n_minibatches):
        rows_j = torch.arange(j * mb, (j + 1) * mb)
        metrics, finite = update(cfg, policy, opt, batch, rows_j, objective, params, ranks)
        assert finite
        rows.append(metrics)
    return {k: v.clone() for k, v in D.full_state_dict(policy).items()}, rows


def _rank(rank: int, world: int, port: int, batches: dict, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ranks = D.Ranks(rank, world, torch.device("cpu"))
    results = {case: global_step(case_config(case), batches[case], ranks) for case in CASES}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_on_half_the_minibatch_equal_one_process_on_the_whole(tmp_path):
    torch.set_num_threads(1)
    batches = {case: sampled_batch(case_config(case)) for case in CASES}
    out = tmp_path / "two_ranks.pt"
    mp.spawn(_rank, args=(2, _free_port(), batches, str(out)), nprocs=2)  # spawn: fork after OpenMP can hang
    two = torch.load(out, weights_only=False)
    for case in CASES:
        weights, rows = global_step(case_config(case), batches[case], D.SINGLE)
        moved = max(float((weights[k] - MoEPolicy(hf_config(case_config(case).model, VOCAB, EOS, PAD),
                                                  seed=0).state_dict()[k]).abs().max()) for k in weights)
        assert moved > 1e-3  # the step did something
        d_w = max(float((weights[k] - two[case][0][k]).abs().max()) for k in weights)
        d_m = max(abs(a[k] - b[k]) / max(1.0, abs(a[k])) for a, b in zip(rows, two[case][1], strict=True)
                  for k in a)
        print(f"{case}: max |weight difference| {d_w:.2e}, max metric difference (relative) {d_m:.2e}")
        assert set(rows[0]) == set(two[case][1][0])
        assert d_w < 2e-5, case  # lr 1e-2 AdamW: a step moves weights by ~1e-2
        assert d_m < 1e-4, case


def test_a_minibatch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(C.ConfigError, match="train.batch_prompts: 3 does not split over the 2 data-paral"):
        D.check_world(C.resolve({"train": {"batch_prompts": 3}}), 2)
    D.check_world(C.resolve({"train": {"batch_prompts": 4}}), 2)


def test_megatron_parallel_sizes_must_divide_the_world_and_leave_the_batch_splittable():
    """TP x EP must divide WORLD_SIZE; the mini-batch splits over the data-parallel ranks, world / TP."""
    mega = {"model": {"num_attention_heads": 4, "num_key_value_heads": 2}, "train": {"engine": "megatron"}}
    allowed = r"allowed \(tp, ep\): \[\(1, 1\), \(1, 2\), \(2, 1\)\]"
    with pytest.raises(C.ConfigError, match=r"train.world_size: 2 is not a multiple of train.megatron_tp x "
                                            r"train.megatron_ep = 2 x 2"):  # the config, before any work
        C.resolve(mega, {"train": {"megatron_tp": 2, "megatron_ep": 2, "world_size": 2}})
    with pytest.raises(C.ConfigError, match=r"train.megatron_tp x train.megatron_ep: 2 x 2 does not divide "
                                            r"the 2 ranks .*" + allowed):  # and the ranks torchrun started
        D.check_world(C.resolve(mega, {"train": {"megatron_tp": 2, "megatron_ep": 2, "world_size": 4}}), 2)
    with pytest.raises(C.ConfigError, match="train.batch_prompts: 3 does not split over the 2 data-parallel"):
        D.check_world(C.resolve(mega, {"train": {"megatron_ep": 2, "batch_prompts": 3, "world_size": 2}}), 2)
    D.check_world(C.resolve(mega, {"train": {"megatron_tp": 2, "batch_prompts": 3, "world_size": 2}}), 2)


def test_share_and_gather_are_inverse_in_one_process():
    rows = torch.arange(8)
    assert D.SINGLE.share(rows) is rows and D.SINGLE.gather(rows) is rows
    assert D.Ranks(1, 2).share(rows).tolist() == [4, 5, 6, 7]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_and_auto_resolves_to_cpu():
    with pytest.raises(C.ConfigError, match="train.device='cuda' needs a CUDA GPU"):
        D.resolve_device("cuda")
    assert D.resolve_device("auto") == D.resolve_device("cpu") == torch.device("cpu")
    cfg = C.resolve({"train": {"device": "cuda"}})
    no_gpu = Environment(vllm=False, vllm_build="", triton=False, megatron=False, cuda_gpu=False)
    with pytest.raises(C.ConfigError, match="train.device='cuda' needs capability 'cuda'"):
        check_capabilities(cfg, no_gpu)  # the trainer's first check, from the driver files (no torch)


def test_on_device_runs_the_embedded_engine_under_the_device_default():
    cfg = case_config("minirl/none")
    policy = MoEPolicy(hf_config(cfg.model, VOCAB, EOS, PAD), seed=0)
    plain = EmbeddedRolloutEngine.from_model(policy, "fp32")
    wrapped = D.OnDevice(lambda: EmbeddedRolloutEngine.from_model(policy, "fp32"), torch.device("cpu"))
    a = plain.generate([[2, 3, 4]] * 2, 4, 1.0, torch.Generator().manual_seed(0))
    b = wrapped.generate([[2, 3, 4]] * 2, 4, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.logp_behavior, b.logp_behavior)
    assert wrapped.capabilities == plain.capabilities


# ------------------------------------------------------------------------------ torchrun end to end

ARM = {"model": TINY["model"],
       "task": {"min_operands": 2, "max_operands": 3, "max_operand": 3, "ops": "+", "n_train": 48,
                "n_bench": 16},
       "pipeline": {"pretrain_steps": 60, "sft_steps": 120, "batch_size": 32, "sft_lr": 3e-3},
       "rollout": {"max_new_tokens": 16, "group_size": 4},
       "train": {"batch_prompts": 4, "steps": 4, "n_minibatches": 2, "lr": 1e-3, "device": "cpu"},
       "eval": {"every": 2, "k": 2, "n_problems": 16}, "checkpoint_every": 2, "replay": {"mode": "r3"}}


def _train(out, cfg: dict, world: int, kill_at: int = 0):
    import json
    import os
    import subprocess
    import sys

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
              "--master-port", str(_free_port())] if world > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLCORE_KILL_AT_STEP": str(kill_at)}
    cfg = {**cfg, "train": {**cfg["train"], "world_size": world}}  # the trainer checks it against WORLD_SIZE
    cmd = [*launch, "-m", "rl_core.train", "--out", str(out), "--config-json", json.dumps(cfg)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _rows(run_dir) -> list[dict]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def _max_rel(a: list[dict], b: list[dict]) -> float:
    assert [set(r) for r in a] == [set(r) for r in b]
    return max(abs(x[k] - y[k]) / max(1.0, abs(x[k])) for x, y in zip(a, b, strict=True) for k in x)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_and_resume_at_either_world_size(tmp_path):
    import json

    from tiny import build_cold_start

    cfg = {**ARM, "init": str(build_cold_start(tmp_path / "cs", ARM))}
    for name, world in (("one", 1), ("two", 2)):
        assert _train(tmp_path / name, cfg, world).returncode == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    assert _max_rel(one, two) < 1e-4
    # Killed after step 4 (checkpoint at step 2), resumed at the same and at the other world size.
    for name, first, then, ref in (("two_two", 2, 2, two), ("two_one", 2, 1, two), ("one_two", 1, 2, one)):
        assert _train(tmp_path / name, cfg, first, kill_at=4).returncode != 0
        assert _train(tmp_path / name, cfg, then).returncode == 0
        got = _rows(tmp_path / name)
        if first == then:
            assert got == ref  # the same world size: bitwise the uninterrupted run
        assert _max_rel(got, ref) < 1e-4
