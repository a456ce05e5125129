"""Running ComfyUI workflows on idforge's methods (no ComfyUI executor: the graph is mapped onto method calls).

The graph machinery is `idforge.comfy` (below the methods: reading files, widget orders, node handlers, the
planner and the rule catalog); each method's nodes and rule live in its package (`methods/<m>/workflow.py`, named by
its `Method.workflow`). This package is what reads the registry: `registry` builds the catalog of every registered
method's nodes; `run` opens a workflow with it (`open_workflow`, `load_workflow`), then validates each planned
generation's body as an HTTP body is, finds its model files and runs it through the registry (`prepare`, `execute`),
the same path as the HTTP server and the generic CLI.
"""
