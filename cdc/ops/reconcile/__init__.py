"""``cdcsync reconcile``: verify that an integration's target matches its mapped source.

``report`` (findings and summary, pure), ``source`` (the source read in primary-key chunks
and mapped as snapshot reads), ``targets`` (what each kind of sink holds), ``runner`` (one
run: check, settle, repair through the pipeline, history), ``schedule`` (runs inside
``cdcsync run``/``sync`` on each integration's ``reconcile`` schedule). Lives in
``cdc.ops``: it uses both the capture's snapshot machinery and the sync's sinks.
"""
