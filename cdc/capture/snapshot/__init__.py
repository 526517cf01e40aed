"""Incremental, resumable snapshots merged into the live stream (watermarks, chunks).

Owns the pure planning of chunks and watermark windows (``plan``), the
runner inside a capture session (``runner``) and the ``cdcsync snapshot``
request (``request``). The runner sees the capture session only through the
``SnapshotHost`` protocol it declares.
"""
