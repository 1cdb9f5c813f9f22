"""Writes apple_mct_reference.safetensors: a small MCt text encoder built by Apple's own code (apple/ml-mobileclip,
commit 4144bb1, `mobileclip/text_encoder.py`), its state dict under the `text_encoder.` prefix of Apple's
checkpoints, with random weights in every branch (BN statistics and layer scales too, so each tensor matters),
plus fixed tokens and Apple's output for them. tests/test_weights.py loads it into our MCt and compares outputs.

Run with a checkout of ml-mobileclip on the path: PYTHONPATH=/path/to/ml-mobileclip python make_apple_mct_reference.py
"""

from pathlib import Path

import torch
from mobileclip.text_encoder import TextTransformer
from safetensors.torch import save_file

CONFIG = {
    "context_length": 16,
    "vocab_size": 1000,
    "dim": 32,
    "ffn_multiplier_per_layer": 4.0,
    "n_heads_per_layer": 2,
    "n_transformer_layers": 2,
    "norm_layer": "layer_norm_fp32",
    "causal_masking": False,
    "model_name": "mct",
}

torch.manual_seed(0)
model = TextTransformer(CONFIG, projection_dim=24).eval()
with torch.no_grad():
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.2)
tokens = torch.randint(1, 999, (3, CONFIG["context_length"]))
tokens[:, -1] = 999  # the end-of-text token has the highest id, where both encoders pool
tokens[1, 9:] = 0
tokens[1, 8] = 999
with torch.no_grad():
    output = model(tokens)
state = {f"text_encoder.{k}": v.contiguous() for k, v in model.state_dict().items()}
state |= {"reference.tokens": tokens, "reference.output": output}
save_file(state, Path(__file__).with_name("apple_mct_reference.safetensors"))
print(f"{len(state)} tensors, output {tuple(output.shape)}")
