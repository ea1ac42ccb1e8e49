"""advdetect: scikit-learn-compatible detectors of adversarial examples.

Every detector is a scikit-learn outlier detector fitted on clean images:
``score_samples`` is higher for clean-looking inputs, ``decision_function`` is
negative and ``predict`` returns -1 for inputs flagged as adversarial.
"""

from .base import load
from .binary import BinaryClassifierDetector
from .cmag import CMAGDetector
from .dafar import DAFARDetector
from .defence import DetectAndPurify
from .defensegan import DefenseGANDetector
from .magnet import MagNetDetector
from .mahalanobis import MahalanobisDetector
from .max_softmax import MaxSoftmaxDetector
from .squeeze import FeatureSqueezingDetector

from ._version import __version__

__all__ = ["BinaryClassifierDetector", "CMAGDetector", "DAFARDetector", "DefenseGANDetector",
           "DetectAndPurify", "FeatureSqueezingDetector", "MagNetDetector", "MahalanobisDetector",
           "MaxSoftmaxDetector", "load"]
