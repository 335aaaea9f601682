"""The fleet simulation (`python -m loadtest.fleet`): the served scheduler and autoscaling policy in
simulated time, with service times measured here, validated against a real `live` load run.

- :mod:`loadtest.fleet.service`: service times (batch size -> seconds), measured in process or
  read from a run's replica timings; the GPU scaling from the capacity table;
- :mod:`loadtest.fleet.sim`: the event-level replicas (real Scheduler) and live rooms;
- :mod:`loadtest.fleet.autoscale`: DeadlineAwarePolicy in Serve's delay wrapper, in simulated time;
- :mod:`loadtest.fleet.day`: the day-long fleet scenario and the GPU search;
- :mod:`loadtest.fleet.validate`: the comparison with a real run;
- :mod:`loadtest.fleet.report`: plots and docs/fleet.md;
- :mod:`loadtest.fleet.cli`: the commands.
"""
