"""Java probes run by the cross-language tests (sources here, compiled once per session)."""
