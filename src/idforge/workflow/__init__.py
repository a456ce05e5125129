"""Running ComfyUI workflows on idforge's methods (no ComfyUI executor: the graph is mapped onto method calls).

`formats` reads a workflow (UI format 0.4 / 1.0, API format, a ComfyUI PNG) into one API-format graph; `widgets`
names each class's widget values; `nodes` is the table class_type -> handler (the extension point: a new method
registers the handlers of its node classes); `plan` turns the graph into planned generations (method name + body +
images + models, with an explanation per node), refusing unsupported nodes before any model loads; `run` executes a
plan through the method registry, the same path as the HTTP server and the generic CLI. `pulid_nodes` adds
PuLID's node classes through those extension points (imported here so that every entry point has them).
"""

from idforge.workflow import pulid_nodes as _pulid_nodes  # noqa: E402, F401  (registers PuLID's nodes)
