"""Load scenarios and benchmarks (see loadtest/run.py and loadtest/bench.py)."""

SCENARIO_CLASSES: dict[str, list[tuple[str, int]]] = {
    "farm": [("FarmAgent", 1)],
    "interactive": [("Player", 1)],
    "burst": [("Creator", 1)],
    "tenants": [("NoisyTenant", 3), ("QuietTenant", 1)],
    "autoscale": [("DynamicsOnlyAgent", 1)],
}
"""Each scenario's Locust user classes (loadtest/scenarios.py) and their weights. Kept here, apart
from the classes, because importing those switches grpc to gevent mode."""


def scenario_classes(scenario: str) -> list[tuple[str, int]]:
    return SCENARIO_CLASSES[scenario]
