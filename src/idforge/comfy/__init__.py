"""ComfyUI graph machinery: everything about reading a ComfyUI workflow that knows no method.

`formats` reads a workflow (UI format 0.4 / 1.0, API format, a ComfyUI PNG) into one API-format graph; `widgets`
names each class's widget values; `values` are what node handlers pass along; `nodes` is what a handler sees and a
table of node classes (`NodeTable`); `core_nodes` is ComfyUI's own classes; `generation` is what a method's rule
reads and writes (the values reaching a KSampler, the planned generation); `catalog` holds node tables and rules and
picks the one rule a KSampler's identity nodes fit; `plan` turns a graph into planned generations with a catalog.

It sits below `methods/`: each method's node classes and rule live in its own package (`methods/<m>/workflow.py`),
and `idforge.workflow` reads the registry to put them in a catalog.
"""
