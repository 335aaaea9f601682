"""What the dynamics model kinds share: action and event validation (:mod:`.actions`) and the event
text encoder (:mod:`.events`)."""
