"""The dynamics engine of one model replica: scheduler, state cache, runner, output, and the typed
request and result (:mod:`.types`). It never sees a protobuf. See :mod:`.core`."""
