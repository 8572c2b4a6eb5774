"""Model bundles, MLflow tracking, the model registry (versions, aliases), promotion gates and decisions.

Importing this package does not import MLflow; the registry and tracking import it on first use.
"""

from tastebud.registry.aliases import CHALLENGER, CHAMPION, ModelRegistry, ModelVersion
from tastebud.registry.bundle import BUNDLE_SCHEMA_VERSION, Bundle, load_bundle, verify_bundle, write_bundle
from tastebud.registry.decisions import Decision, append_decision, read_decisions
from tastebud.registry.gates import GateResult, check_gate

__all__ = [
    "BUNDLE_SCHEMA_VERSION",
    "CHALLENGER",
    "CHAMPION",
    "Bundle",
    "Decision",
    "GateResult",
    "ModelRegistry",
    "ModelVersion",
    "append_decision",
    "check_gate",
    "load_bundle",
    "read_decisions",
    "verify_bundle",
    "write_bundle",
]
