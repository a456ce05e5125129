"""The demo `make demo` runs: builds the tiny kit and runs every method on generated sample images."""
