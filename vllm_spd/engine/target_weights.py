"""Target weights a stage rank lacks under vLLM's pipeline split.

The controller (last stage) drafts: the draft module's rows need anchor 0, the
input embedding of each token, but vLLM gives ``embed_tokens`` to the first rank
only unless the target ties it to the LM head. The controller then loads its own
copy of the embedding table from the target's safetensors (or random values under
``load_format="dummy"``, as the dummy loader does for every other weight).
"""

from __future__ import annotations

import torch

_NAMES = ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "embed_tokens.weight")


def load_target_embedding(load_config, model_config, device) -> torch.Tensor:
    hf = model_config.hf_text_config
    shape = (hf.vocab_size, hf.hidden_size)
    if "dummy" in str(load_config.load_format).lower():
        return torch.empty(shape, dtype=model_config.dtype, device=device).uniform_(-1e-3, 1e-3)
    from vllm_spd.head import read_target_tensor

    table = read_target_tensor(model_config.model, _NAMES)
    if table is None:
        raise ValueError(
            f"spd: the controller stage needs the target's input embedding ({' / '.join(_NAMES)}) but "
            f"found none in the *.safetensors of {model_config.model!r}; pass a local model directory")
    if tuple(table.shape) != shape:
        raise ValueError(f"spd: the target's input embedding has shape {tuple(table.shape)}, expected {shape}")
    return table.to(device=device, dtype=model_config.dtype)
