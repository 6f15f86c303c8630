"""Traffic simulator: a world with a known click and purchase model, ranked by a policy, into the log.

``simulate`` runs many days into a log store and writes the truth (oracle probabilities, planted
PII, malformed lines) beside it; ``Simulator``/``simulate_day`` drive one day at a time (e.g.
through a served model with ``HttpPolicy``); ``generate_day`` returns a day's traffic without I/O.
"""

from loopline.simulate.cli import register_cli
from loopline.simulate.malformed import MALFORMED_KINDS
from loopline.simulate.policies import (
    BatchPolicy,
    CallablePolicy,
    HttpPolicy,
    OraclePolicy,
    Policy,
    PolicyError,
    PopularityPolicy,
    RandomPolicy,
    RankedList,
    RequestContext,
    make_policy,
)
from loopline.simulate.run import (
    SimulationSummary,
    Simulator,
    TruthWriter,
    default_truth_dir,
    load_world,
    simulate,
    simulate_day,
    simulate_with_random_day,
)
from loopline.simulate.traffic import DayTraffic, generate_day
from loopline.simulate.world import World

__all__ = [
    "MALFORMED_KINDS",
    "BatchPolicy",
    "CallablePolicy",
    "DayTraffic",
    "HttpPolicy",
    "OraclePolicy",
    "Policy",
    "PolicyError",
    "PopularityPolicy",
    "RandomPolicy",
    "RankedList",
    "RequestContext",
    "SimulationSummary",
    "Simulator",
    "TruthWriter",
    "World",
    "default_truth_dir",
    "generate_day",
    "load_world",
    "make_policy",
    "register_cli",
    "simulate",
    "simulate_day",
    "simulate_with_random_day",
]
