"""scikit-learn's common estimator checks on every detector.

A model-aware detector needs a classifier; scikit-learn's checks feed 2-D
tabular data with 1 to 10 features. The classifier below takes any width (an
adaptive average pool to 8 values, then two linear layers), and the detectors
treat each row as a vector (``input_shape="flat"``) with no [0, 1] range
(``input_range=None``), so every check applies as it would to IsolationForest.
"""

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from advdetect import CMAGDetector


class AnyWidthMLP(nn.Module):
    """A classifier for rows of any number of features."""

    def __init__(self, n_classes=2):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(8)
        self.fc1 = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(self.pool(x.unsqueeze(1)).flatten(1))))


def _tabular(det_cls, **params):
    torch.manual_seed(0)
    base = dict(input_shape="flat", input_range=None, max_epochs=2, batch_size=32, device="cpu",
                random_state=0)
    base.update(params)
    return det_cls(AnyWidthMLP(), **base)


DETECTORS = [_tabular(CMAGDetector, width=4)]

# joblib.hash of a torch tensor differs between a module and its deep copy (the
# check compares the parameter with a deepcopy made before fit), so this check
# fails for any estimator holding a torch module as a parameter. That fit leaves
# the classifier untouched is tested directly in test_base.py.
_HASH_REASON = ("joblib.hash of torch tensors is not stable across deepcopy; "
                "non-mutation of the classifier is tested in test_base.py")
EXPECTED = {"check_estimators_overwrite_params": _HASH_REASON}


def _expected_failed_checks(estimator):
    return EXPECTED


@parametrize_with_checks(DETECTORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)
