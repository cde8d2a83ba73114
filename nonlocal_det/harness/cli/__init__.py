"""What the command-line tools (tools/) share: loading a trained model's config, seed sweeps."""
