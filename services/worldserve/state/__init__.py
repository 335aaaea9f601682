"""World state: the Redis store, the trajectory archive and its archiver.

The only code that talks to Redis or to the object store; every application uses them through the
public methods of :class:`~worldserve.state.store.SessionStore`,
:class:`~worldserve.state.quotas.QuotaEnforcer`, :class:`~worldserve.state.live.LiveState` and
:class:`~worldserve.state.archive.Archive`.
"""
