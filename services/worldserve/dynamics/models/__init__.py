"""One package per dynamics model kind: :mod:`.canvas` (the scroll-canvas default world) and
:mod:`.transformer` (the latent-frame transformer of the fast tier). None imports another's
package; what they share lives in :mod:`worldserve.dynamics.layers` and
:mod:`worldserve.dynamics.attention`."""
