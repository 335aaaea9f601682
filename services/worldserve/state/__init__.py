"""World state: the Redis store, the trajectory archive and its archiver.

The only code that talks to Redis or to the object store; every application uses them through the
public methods of :class:`~worldserve.state.store.SessionStore`,
:class:`~worldserve.state.quotas.QuotaEnforcer`, :class:`~worldserve.state.live.LiveState` and
:class:`~worldserve.state.archive.Archive`. The store is split by job: ``store.py`` (the Redis
layout, connections, the session lifecycle and the tenant's index), ``steplog.py`` (its step log
and the archive's side of it), ``records.py`` (the typed records, keys and id checks, re-exported
by ``store.py``) and ``scripts.py`` (its Lua scripts).
"""
