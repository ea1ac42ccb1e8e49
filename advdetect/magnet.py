"""MagNet: autoencoder reconstruction-error detectors and reformer.

Dongyu Meng, Hao Chen, *MagNet: a Two-Pronged Defense against Adversarial
Examples*, ACM CCS 2017: the detector based on reconstruction error (the mean
|x - AE(x)|^p), the autoencoder as reformer, and the MNIST architecture and
settings, as in the reference Keras code
(GitHub ``Trevillie/MagNet``: ``defensive_models.py``, ``train_defense.py``,
``worker.py``).
"""

import contextlib
import numbers

import numpy as np
import pandas as pd
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.utils import to_tensor
from torch import nn

from .base import (BaseDetector, PurifierMixin, invalid_parameter, train_module,
                   upper_quantile)
from .nn.autoencoders import MNIST_STRUCTURES, MagNetAutoencoder

__all__ = ["MagNetDetector", "MagNetAutoencoder", "DenoisingAutoencoderNet", "MNIST_STRUCTURES"]

# Reconstruction-error norm of each detector (test_defense.py: p=2 for I, 1 for II).
_P = {"I": 2, "II": 1}
_DETECTORS = ("I", "II")


class DenoisingAutoencoderNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a denoising autoencoder.

    In training mode every batch gets fresh Gaussian noise (``noise_std``, clipped
    to ``noise_range``) before the forward pass, and the loss adds
    ``activity_l2`` times the module's ``activity_`` (the reference's Keras
    ``activity_regularizer=l2(...)``). Inference (``module_.eval()``) sees the
    input unchanged.

    Parameters
    ----------
    *args, **kwargs
        As for :class:`skorch.NeuralNet`.
    noise_std : float, default=0.1
    noise_range : (float, float) or None, default=(0, 1)
    activity_l2 : float, default=0.0
    """

    def __init__(self, *args, noise_std=0.1, noise_range=(0.0, 1.0), activity_l2=0.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.noise_std = noise_std
        self.noise_range = noise_range
        self.activity_l2 = activity_l2

    def infer(self, x, **fit_params):
        if self.module_.training and self.noise_std > 0:
            x = to_tensor(x, device=self.device)
            x = x + self.noise_std * torch.randn_like(x)
            if self.noise_range is not None:
                x = x.clamp(*self.noise_range)
        return super().infer(x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        activity = getattr(self.module_, "activity_", None)
        if training and self.activity_l2 and activity is not None:
            loss = loss + self.activity_l2 * activity
        return loss


class MagNetDetector(PurifierMixin, BaseDetector):
    """MagNet's reconstruction-error detectors, with the autoencoder as reformer.

    Meng & Chen (CCS 2017) train autoencoders on clean data only, with Gaussian
    noise added to the inputs (denoising autoencoders). A clean input lies near
    the manifold they learned and is reconstructed well; an adversarial input
    is pushed off it and its reconstruction error
    ``E(x) = mean |x - AE(x)|^p`` is larger. Each detector's
    threshold is set so that a fraction ``drop_rate`` of clean held-out images
    is rejected, and an input is flagged when **any** detector flags it. The
    autoencoder of detector I is also MagNet's reformer:
    :meth:`transform` returns its reconstruction, which moves an input back
    towards the clean manifold before it reaches the classifier.

    MagNet is model-agnostic: it takes no classifier.

    Parameters
    ----------
    detectors : sequence of {"I", "II"}, default=("I", "II")
        Detectors to train and use. I: the autoencoder with one average-pooling
        level, scored with p = 2; II: three convolutions at full resolution,
        scored with p = 1 (the reference's MNIST pair).
    drop_rate : float in [0, 1), default=0.001
        Fraction of the clean validation images each detector rejects (the
        reference's 0.001). The threshold is the error below or at which
        ``1 - drop_rate`` of them lie: ``sorted(e)[ceil(n (1 - drop_rate)) - 1]``,
        and inputs with a larger error are flagged, so exactly
        ``floor(n * drop_rate)`` validation images are (without ties).
    validation_fraction : float in [0, 1), default=0.1
        Fraction of the clean training data held out of autoencoder training to
        set the thresholds on (the reference used MNIST's 5,000-image validation
        split). ``0`` sets them on the training images, which the autoencoders
        reconstruct better than new ones (more false positives).
    noise_std : float, default=0.1
        Standard deviation of the Gaussian noise added to training inputs (in
        units of the input range), clipped back to ``input_range``; fresh noise
        for every batch. Never applied when scoring.
    activity_l2 : float, default=1e-9
        Weight of the L2 activity regulariser on every layer's output (the
        reference's ``activity_regularizer=l2(1e-9)``); ``0`` switches it off.
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input. ``"flat"``
        treats each row of 2-D input as a vector (a small fully connected
        autoencoder is then used).
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range input values must lie in and reconstructions are squashed to.
        ``None`` accepts any finite values (tabular data): reconstructions are
        then unbounded and the training noise is not clipped.
    max_epochs : int, default=10
        Training epochs of each autoencoder. The reference trains 100 epochs of
        batch 256 on 50,000 MNIST images (about 20,000 updates); see Notes for
        why the defaults differ and how to match it.
    batch_size : int, default=32
        Training and inference batch size (the reference: 256).
    lr : float, default=1e-2
        Adam's learning rate (the reference: Keras's default, 1e-3).
    optimizer : torch optimizer class, default=torch.optim.Adam
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"`` uses CUDA when available.
    random_state : int or None, default=None
        Seeds torch and numpy inside ``fit`` (weights, noise, shuffling, the
        validation split); two fits with one seed give the same scores on the CPU.
    verbose : int, default=0
        0 silent; 1 a progress bar per autoencoder; 2 skorch's epoch log too.

    Attributes
    ----------
    autoencoders_ : torch.nn.ModuleDict
        The trained autoencoders, keyed by detector name.
    detectors_ : tuple of str
        The detectors used, in the order ("I", "II").
    thresholds_ : pandas.DataFrame
        Per detector (rows): ``p``, ``threshold`` (on the reconstruction error)
        and ``scale`` (standard deviation of the clean validation errors).
    calibration_ : pandas.DataFrame
        Reconstruction errors of the clean validation images, one column
        ``error_<name>`` per detector; the thresholds are computed from them.
    n_calibration_ : int
        Number of validation images.
    offset_ : float
        ``decision_function = score_samples - offset_``; 0 after ``fit``.
    image_shape_ : tuple
        (C, H, W) of the training images.
    n_features_in_ : int
        C * H * W.

    See Also
    --------
    FeatureSqueezingDetector : the other standard baseline (reads the classifier).
    CMAGDetector : model-aware reconstruction from the classifier's features.

    Notes
    -----
    ``score_samples`` puts the detectors on one scale like
    :class:`CMAGDetector`: for each detector the margin ``threshold - E(x)``
    divided by the standard deviation of the clean validation errors, and the
    smallest margin over detectors. It is negative exactly when some detector
    flags the input (``offset_ = 0``), and it ranks inputs for ROC curves.

    Differences from the reference code, and why:

    * Noise is drawn afresh for every batch (the reference draws it once for
      the whole training set): more augmentation for the same cost.
    * The activity regulariser is averaged over the batch (sum of squares per
      sample); at 1e-9 it barely matters either way.
    * The reference takes the threshold as the ``int(n * drop_rate)``-th largest
      validation error and rejects errors at or above it; with fewer than
      ``1 / drop_rate`` validation images that index is 0 and it rejects
      everything. Rejecting errors strictly above the next one down gives the
      same rejections otherwise and rejects none in that case.
    * Images of odd size are handled (pooling rounds up, the decoder crops),
      and inputs under 4 px get a fully connected autoencoder.
    * MagNet's divergence-based detectors (JSD between the classifier's
      softmax on x and on AE(x), used for CIFAR-10) are not implemented.

    **Training defaults.** Sigmoid autoencoders this small sit on a plateau,
    returning a blurred mean digit, for their first hundred-odd updates, and
    there a reconstruction-error detector is useless (FGSM images then
    reconstruct no worse than clean ones). With the reference's batch 256 and
    learning rate 1e-3, a 4,000-image MNIST set gives 16 updates per epoch and
    needs hundreds of epochs. Batch 32 and learning rate 1e-2 for 10 epochs
    (about 1,100 updates on 4,000 images) reach a mean squared error of about
    0.004 for autoencoder I; training both took 27 s on 2 CPU cores. On the
    CPU, training runs on one torch thread (the setting is restored after):
    the networks are so small that two intra-op threads made it 1.6-4x slower. On fewer
    images, raise ``max_epochs`` so that each autoencoder gets at least
    ~300 updates (``max_epochs * n_train / batch_size``). For a like-for-like
    comparison on full MNIST, set ``batch_size=256, lr=1e-3, max_epochs=100``.

    References
    ----------
    D. Meng, H. Chen. MagNet: a Two-Pronged Defense against Adversarial
    Examples. ACM CCS 2017, pp. 135-147.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect.magnet import MagNetDetector
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = MagNetDetector(max_epochs=1, device="cpu", random_state=0).fit(X)
    >>> det.predict(X[:3]).shape, det.transform(X[:3]).shape
    ((3,), (3, 1, 8, 8))
    >>> list(det.reconstruction_errors(X[:3]).columns[:3])
    ['error_I', 'error_II', 'score']
    """

    _parameter_constraints = {
        **BaseDetector._shared_constraints("validation_fraction", "input_shape",
                                           "input_range", "max_epochs", "batch_size", "lr",
                                           "optimizer", "device", "random_state", "verbose"),
        # Its contents, a non-empty selection without repeats: _check_params.
        "detectors": [StrOptions(set(_DETECTORS)), "array-like"],
        "drop_rate": [Interval(numbers.Real, 0, 1, closed="left")],
        # [0, inf]: any number >= 0, as before the constraints.
        "noise_std": [Interval(numbers.Real, 0, None, closed="both")],
        "activity_l2": [Interval(numbers.Real, 0, None, closed="both")],
    }

    def __init__(self, *, detectors=_DETECTORS, drop_rate=0.001,
                 validation_fraction=0.1, noise_std=0.1, activity_l2=1e-9, input_shape=None,
                 input_range=(0.0, 1.0), max_epochs=10, batch_size=32, lr=1e-2,
                 optimizer=torch.optim.Adam, device="auto", random_state=None, verbose=0):
        self.detectors = detectors
        self.drop_rate = drop_rate
        self.validation_fraction = validation_fraction
        self.noise_std = noise_std
        self.activity_l2 = activity_l2
        self.input_shape = input_shape
        self.input_range = input_range
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------ parameters
    def _selected_detectors(self):
        dets = (self.detectors,) if isinstance(self.detectors, str) else self.detectors
        try:
            dets = tuple(dets)
        except TypeError:
            dets = (dets,)
        unknown = [d for d in dets if d not in _DETECTORS]
        if not dets or unknown or len(set(dets)) != len(dets):
            raise invalid_parameter(self, "detectors", "a non-empty selection without repeats "
                                    f"from {_DETECTORS}")
        return tuple(d for d in _DETECTORS if d in dets)

    def _check_params(self):
        super()._check_params()
        # The contents of the selection: no constraint expresses them.
        self._selected_detectors()

    # ------------------------------------------------------------------ fit
    _threshold_params = ("drop_rate",)
    _networks = ("autoencoders_",)
    _fitted_values = ("detectors_",)

    def _prepare(self, X, y):
        # MagNet does not read the classifier: no copy of it is made.
        self.detectors_ = self._selected_detectors()

    def _build_autoencoder(self, name):
        return MagNetAutoencoder(image_shape=self.image_shape_,
                                 structure=MNIST_STRUCTURES[name], value_range=self._value_range)

    def _build(self):
        self.autoencoders_ = nn.ModuleDict(
            {name: self._build_autoencoder(name) for name in self.detectors_}).to(self.device_)

    def _train(self, X, y, fit_idx, cal_idx, rng):
        X_fit = X[fit_idx]
        autoencoders = {}
        with _one_torch_thread(self.device_):
            for name in self.detectors_:
                autoencoders[name] = train_module(
                    self._build_autoencoder(name), X_fit, X_fit, nn.MSELoss,
                    desc=f"MagNet AE-{name}", detector=self, net_cls=DenoisingAutoencoderNet,
                    noise_std=float(self.noise_std) * self._data_range,
                    noise_range=self._value_range, activity_l2=float(self.activity_l2))
        self.autoencoders_ = nn.ModuleDict(autoencoders).to(self.device_).eval()

    def _set_thresholds(self):
        """The reference's rule: each threshold passes all but ``drop_rate`` of the clean
        calibration errors; the score is the smallest margin in units of its spread."""
        cal = self.calibration_
        self._check_threshold_data(len(cal), self.drop_rate, f"drop_rate={self.drop_rate:g}")
        rows = {}
        for name in self.detectors_:
            e = cal[f"error_{name}"].to_numpy()
            rows[name] = {"p": _P[name], "threshold": upper_quantile(e, self.drop_rate),
                          "scale": float(np.std(e)) or 1.0}
        self.thresholds_ = pd.DataFrame.from_dict(rows, orient="index")
        self.n_calibration_ = len(cal)
        self.offset_ = 0.0

    # -------------------------------------------------------------- forward
    def _forward_batch(self, xb, every=False):
        """Reconstruction error mean |x - AE(x)|^p of each autoencoder."""
        return {f"error_{name}": (xb - self.autoencoders_[name](xb)).abs().pow(_P[name])
                .flatten(1).mean(1) for name in self.detectors_}

    def _score(self, metrics):
        margins = [(thr["threshold"] - metrics[f"error_{name}"]) / thr["scale"]
                   for name, thr in self.thresholds_.iterrows()]
        return torch.stack(margins).min(dim=0).values

    # --------------------------------------------------------------- extras
    def reconstruct(self, X, detector=None):
        """Reconstructions of ``X`` by one autoencoder, as images.

        Parameters
        ----------
        X : array-like of images
        detector : {"I", "II"} or None, default=None
            ``None``: the reformer, autoencoder I (II when only II was trained),
            what :meth:`transform` returns. Every trained autoencoder is
            scored, so the default is always one the detector judges by.

        Returns
        -------
        ndarray of shape (n_samples, C, H, W), float32
        """
        check_is_fitted(self)
        name = self.detectors_[0] if detector is None else detector
        if name not in self.detectors_:
            raise ValueError(f"detector must be one of the trained detectors "
                             f"{self.detectors_}, got {detector!r}")
        return self._map_batches(X, self.autoencoders_[name])



@contextlib.contextmanager
def _one_torch_thread(device):
    """Train on one intra-op thread on the CPU, then restore the setting.

    The autoencoders have a few hundred weights: per-layer work is too small to
    share, and on 2 cores (busy with other work) two threads trained them 4x
    slower than one (105 s against 27 s on 4,000 MNIST images).
    """
    n = torch.get_num_threads()
    if str(device) != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
