"""WiSE-FT: weight-space mixes of the init model and each fine-tuned checkpoint."""

from __future__ import annotations

import torch


def interpolate_weights(
    init_state: dict[str, torch.Tensor],
    tuned_state: dict[str, torch.Tensor],
    alpha: float,
) -> dict[str, torch.Tensor]:
    """Return (1 - alpha) * init + alpha * tuned, in float32, for every float tensor.

    Non-float tensors (integer buffers) are taken from `tuned_state`. Alpha 0 returns
    the init weights and alpha 1 the fine-tuned ones, exactly.
    """
    if init_state.keys() != tuned_state.keys():
        differing = sorted(init_state.keys() ^ tuned_state.keys())
        raise ValueError(
            f"init and fine-tuned weights differ in keys, e.g. {differing[:3]}; "
            "WiSE-FT needs the same architecture"
        )
    mixed = {}
    for key, tuned in tuned_state.items():
        if not tuned.is_floating_point():
            mixed[key] = tuned.clone()
        elif alpha == 0:
            mixed[key] = init_state[key].float().clone()
        elif alpha == 1:
            mixed[key] = tuned.float().clone()
        else:
            mixed[key] = torch.lerp(init_state[key].float(), tuned.float(), alpha)
    return mixed
