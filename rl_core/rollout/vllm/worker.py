"""Weight sync in place for vLLM's GPU workers: a worker extension (vLLM mixes it into its worker class).

    LLM(..., worker_extension_cls="rl_core.rollout.vllm.worker.WeightSync")
    llm.collective_rpc("rl_load_weights", args=([(hub_name, cpu_tensor), ...],))
    llm.collective_rpc("rl_after_load")
    llm.collective_rpc("rl_weight_sample", args=([vllm_name, ...],))

Runs inside vLLM's worker process, so it imports nothing of rl_core's and only torch and vllm. The pattern is
vLLM's own RLHF examples (examples/offline_inference/rlhf_utils.py): ``model.load_weights`` with
checkpoint-format (hub) names and tensors, which the model's weight loaders stack into its fused
parameters (qkv_proj, the experts' w13/w2), then ``process_weights_after_loading`` once. Tensors travel
as CPU tensors through collective_rpc's serialiser (simple, and enough for the models this project trains;
CUDA IPC handles would avoid the copy for large ones). Written against vLLM's documented worker-extension
API; not run on a GPU here (the project's machines have none): rl_core.rollout.vllm.engine checks a sample of
tensors after every sync and falls back to restarting vLLM from disk when they differ.
"""

from __future__ import annotations

import torch


class WeightSync:
    """Methods vLLM's worker gains (``self`` is the worker: ``self.model_runner``, ``self.device``)."""

    def _rl_model(self):
        runner = self.model_runner
        return runner.get_model() if hasattr(runner, "get_model") else runner.model

    def rl_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load hub-layout (name, tensor) pairs into the live model; returns how many."""
        model = self._rl_model()
        device = next(model.parameters()).device
        model.load_weights(weights=[(name, t.to(device)) for name, t in weights])
        return len(weights)

    def rl_after_load(self) -> None:
        """What vLLM's loader does once all weights are in (repacking, where a kernel needs it)."""
        from vllm.model_executor.model_loader.utils import process_weights_after_loading

        process_weights_after_loading(self._rl_model(), self.model_config, self.device)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def rl_weight_sample(self, names: list[str]) -> list[torch.Tensor | None]:
        """The named parameters as fp32 CPU tensors (None where the model has no such parameter)."""
        params = dict(self._rl_model().named_parameters())
        return [params[n].detach().float().cpu() if n in params else None for n in names]


__all__ = ["WeightSync"]
