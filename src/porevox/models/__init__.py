"""Torch networks and estimators (U-Net, DDPM, cGAN, regression) — later issues."""
