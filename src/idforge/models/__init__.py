"""Model store, presets, single-file loading and the tiny model kit."""
