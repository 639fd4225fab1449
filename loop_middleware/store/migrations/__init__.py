"""Alembic migrations of the store's schema (run by :class:`~loop_middleware.store.Store`).

Shipped as package data: ``env.py`` and ``versions/`` are read by alembic at run time, so no
``alembic.ini`` is needed. See :mod:`loop_middleware.store._migrate` for the API.
"""
