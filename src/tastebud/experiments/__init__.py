"""Online experiments: A/B tests, interleaving and canaries, declared as data and assigned deterministically.

An experiment lives in the store (``experiments``, with every change in ``experiment_changes``) and goes
draft -> running -> stopped::

    experiment = create_experiment(store, registry, settings, {
        "name": "ease-vs-als", "variants": [{"name": "control", "ref": "champion"},
                                            {"name": "treatment", "ref": "challenger"}],
        "weights": [50, 50]}, actor="ana")
    start_experiment(store, registry, settings, "ease-vs-als", actor="ana")  # bundles verified, no overlap

    assigner = Assigner(running_experiments(store, "movielens-100k"))        # each serving process, per poll
    assigner.assign("user-42")  # Assignment(experiment="ease-vs-als", variant="treatment", ...) or None

Assignment is a sha256 of a salt and the user id (see :mod:`tastebud.experiments.assignment`): the same in every
process and on every machine, for users no model has seen too.
"""

from tastebud.experiments.assignment import BUCKETS, Assigner, Assignment, assign, bucket, layer_key
from tastebud.experiments.definitions import (
    DEFAULT_LAYER,
    GUARDRAILS,
    KINDS,
    METRICS,
    STATUSES,
    Experiment,
    ExperimentSpec,
    Variant,
    create_experiment,
    experiment_changes,
    get_experiment,
    list_experiments,
    overlaps,
    parse_range,
    parse_variant,
    parse_weights,
    resolve_variant,
    running_experiments,
    start_experiment,
    stop_experiment,
    verify_variant_bundle,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_LAYER",
    "GUARDRAILS",
    "KINDS",
    "METRICS",
    "STATUSES",
    "Assigner",
    "Assignment",
    "Experiment",
    "ExperimentSpec",
    "Variant",
    "assign",
    "bucket",
    "create_experiment",
    "experiment_changes",
    "get_experiment",
    "layer_key",
    "list_experiments",
    "overlaps",
    "parse_range",
    "parse_variant",
    "parse_weights",
    "resolve_variant",
    "running_experiments",
    "start_experiment",
    "stop_experiment",
    "verify_variant_bundle",
]
