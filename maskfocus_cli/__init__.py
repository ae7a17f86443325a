"""maskfocus: RL post-training for masked generative text-to-image models."""

__version__ = "0.1.0"
