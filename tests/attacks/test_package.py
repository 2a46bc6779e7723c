"""Package boundaries: attacks imports only torch, numpy, scikit-learn (and matplotlib lazily)."""

import ast
import sys
from pathlib import Path

import attacks

ROOT = Path(attacks.__file__).resolve().parent
ALLOWED = {"numpy", "torch", "sklearn", "matplotlib", "__future__"} | set(sys.stdlib_module_names)


def test_attacks_never_imports_unlearning_or_bilevel():
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ALLOWED, f"{path.name} imports {name}"


def test_public_api_is_complete():
    for name in attacks.__all__:
        assert hasattr(attacks, name), name
    for name in ("SVCMIA", "ThresholdMIA", "LiRA", "RMIA", "UnlearningLiRA", "mia_efficacy", "predict_probs"):
        assert name in attacks.__all__
    for name in ("auc", "roc_curve", "tpr_at_fpr", "balanced_accuracy", "membership_advantage"):
        assert callable(getattr(attacks.metrics, name))
