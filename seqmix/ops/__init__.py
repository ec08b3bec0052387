"""Pure functions behind the mixers: naive references and the fast forms they are tested against.

Convention (every op module follows it; a new op starts here):

* One module per mixer family (``attention``, ``frame_attention``, ``ttt``, ``lact``, ``ssd``, ``delta_rule``) and
  shared pieces (``rope``, ``conv``: the causal depthwise convolution; ``scan``: the chunk-to-chunk hand-off of the
  recurrences, a loop eagerly and torch's scan op when exported); third-party kernels are reached only through
  :mod:`seqmix.ops.external`. No ``nn.Module`` here: parameters come in as tensors.
* Twins. Every fast form has a naive twin with the SAME signature beside it (``attention_sdpa`` /
  ``attention_naive``, ``ttt_scan`` / ``ttt_scan_naive``, ``ssd_chunk`` / ``ssd_naive``,
  ``chunk_gated_delta_rule`` / ``naive_recurrent_gated_delta_rule``); the naive twin is a plain loop or dense
  form, slow and obviously right. A fast form may take extra keywords that change only how it computes (the chunk
  size ``chunk_size``, ``checkpoint_group``, ``block_size``), never what.
* Layout. Tensors are ``[B, T, H, K]`` (batch, tokens, heads, head dim) for the recurrences that fla and mamba-ssm
  also implement (``ssd``: ``x [B, T, H, P]``; ``delta_rule``: ``q, k [B, T, H, K]``), so those libraries take
  them without a transpose; attention and the TTT scan are head-major ``[B, H, T, K]`` (what SDPA /
  FlexAttention / flash-attn's wrappers and the per-head TTT inner loop want). Each function's docstring gives
  its shapes.
* Carried state. Recurrences take ``initial_state`` and return ``(output, final_state)``, the final state only when
  ``output_final_state=True`` (fla's names); the TTT scan takes its inner weights as ``state`` and always returns
  the weights after the last full mini-batch (the layer keeps the pending tokens).
* Precision. Inputs may be fp16 / bf16 / fp32 / fp64; recurrent states, decays, normalisation statistics and
  accumulations run in :func:`acc_dtype` (fp32, or fp64 for fp64 inputs, so the fp64 twin tests are exact), and
  outputs come back in the input dtype.
"""

import torch

__all__ = ["acc_dtype"]


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype for ``x``: fp64 stays fp64 (exact reference tests), everything else runs in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
