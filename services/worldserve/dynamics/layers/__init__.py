"""What the dynamics model kinds share: action and event validation (:mod:`.actions`), the event
text encoder (:mod:`.events`) and the key/value page pool (:mod:`.kv_pages`)."""
