"""Checkpoint formats: diffusers pipeline folders, OpenAI `.pt` files, Hub ids."""
