"""PuLID for SDXL (ToTheBeginning/PuLID): v1, v1.1 and ComfyUI's converted file, on the shared engine loop."""
