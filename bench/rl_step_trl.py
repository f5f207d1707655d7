"""Seconds per global step of trl.GRPOTrainer on the same work as bench/rl_step_ours.py.

    .venv-peers/bin/python bench/rl_step_trl.py SPEC_JSON    (run by bench/driver.py; prints BENCH_JSON {...})

The mapping of our global step (B prompts x G samples, up to L tokens, N optimizer steps) onto TRL:
per_device_train_batch_size = B*G completions per optimizer step, gradient_accumulation_steps = 1,
num_generations = G, steps_per_generation = N (one generate call of N*B*G completions, then N optimizer
steps; for N > 1 TRL also runs the old-logp pass, as we do), num_iterations = 1, max_completion_length = L,
beta = 0 (no reference model), loss_type = "grpo" (per-sequence token mean, as our `grpo` objective),
epsilon 0.2 / epsilon_high 0.27, z-scored group advantages (scale_rewards="group"), AdamW lr constant,
betas (0.9, 0.99), no weight decay, grad clip 1, fp32, use_vllm=False (transformers `generate`),
router_aux_loss_coef = 0 (we have no load-balancing loss), the reward rl_core.tasks.reward.
The model is the same HF checkpoint loaded with transformers.Qwen3MoeForCausalLM (its default experts
implementation). A global step = N trainer steps; the first `warmup` global steps are excluded.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, pin_threads, spec  # noqa: E402


def main() -> None:
    s = spec()
    pin_threads(s["threads"])
    import torch
    import transformers
    import trl
    from datasets import Dataset

    from rl_core import config as C
    from rl_core.tasks import Problem, make_task, reward

    B, G, L, N = s["B"], s["G"], s["L"], s["N"]
    task = make_task(C.resolve({"task": s["task"]}).task)
    data = Dataset.from_dict({"prompt": [p.prompt for p in task.train_problems],
                              "answer": [p.answer for p in task.train_problems]})

    def task_reward(prompts, completions, answer, **_):
        return [reward(c, Problem(p, a, 0)) for p, c, a in zip(prompts, completions, answer, strict=True)]

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(s["ckpt"]) / "tokenizer.json"),
                                               pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    model = transformers.Qwen3MoeForCausalLM.from_pretrained(s["ckpt"], dtype=torch.float32)
    marks: list[float] = []
    cpu_marks: list[float] = []
    lengths: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())
            cpu_marks.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as tmp:
        args = trl.GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=B * G, gradient_accumulation_steps=1,
            num_generations=G, steps_per_generation=N, num_iterations=1, max_completion_length=L,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="grpo", epsilon=0.2, epsilon_high=0.27,
            scale_rewards="group", learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0,
            adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            router_aux_loss_coef=0.0, use_vllm=False, use_cpu=True, bf16=False, fp16=False,
            max_steps=N * (s["warmup"] + s["steps"]), logging_steps=N, report_to="none",
            save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=s["seed"])
        trainer = trl.GRPOTrainer(model=model, reward_funcs=task_reward, args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[Clock()])
        trainer.train()
    def per_step(t: list[float]) -> list[float]:
        ends = t[N - 1 :: N]  # end of each global step
        return [b - a for a, b in zip(ends[s["warmup"] - 1 :], ends[s["warmup"] :], strict=False)]
    walls, cpus = per_step(marks), per_step(cpu_marks)
    timed_lengths = lengths[s["warmup"]:]
    emit({
        "impl": f"trl {trl.__version__}", "s_per_global_step": sum(walls) / len(walls), "walls": walls,
        "cpus": cpus,
        "response_tokens_per_step": (sum(timed_lengths) / max(len(timed_lengths), 1)) * N * B * G,
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "transformers": transformers.__version__, "torch": torch.__version__,
    })


if __name__ == "__main__":
    main()
