"""Revision scripts, oldest first (``v0001_baseline``, ``v0002_thread_source``, ...)."""
