"""Mappers: table events to external entity models with last-writer-wins versions."""
