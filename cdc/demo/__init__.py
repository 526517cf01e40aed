"""``cdcsync demo`` and the throwaway servers it and the tests run.

Owns the demo (``runner``), its live view (``live_view``), the stand-in CRM
(``crm``) and throwaway PostgreSQL, broker and registry processes
(``throwaway``). Only ``cdc.cli``, tests and benchmarks import it; the
runtime never does.
"""
