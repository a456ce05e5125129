"""The generation engine: one denoising loop over diffusers components serves every method."""
