"""Defense-GAN: reconstruction by a generator's latent search, as detector and purifier.

Pouya Samangouei, Maya Kabkab, Rama Chellappa, *Defense-GAN: Protecting
classifiers against adversarial attacks using generative models*, ICLR 2018.
A Wasserstein GAN is trained on clean images; an input x is projected onto the
generator's range by ``z* = argmin_z ||G(z) - x||_2^2`` (L random restarts of
R gradient-descent steps, Section 3.3, Eq. 8), G(z*) is handed to the
classifier (purification, Section 3.4), and ``||G(z*) - x||_2^2`` compared
with a threshold detects adversarial inputs (Section 3.5). Settings of the
authors' code: GitHub ``kabkabm/defensegan``
(``experiments/cfgs/gans/{default,mnist}.yml``, ``models/gan.py``).
"""

import copy
import numbers

import numpy as np
import torch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .base import BaseDetector, PurifierMixin, invalid_parameter, train_module
from .nn.gan import WGAN, DefenseGANDecision, gradient_penalty, latent_search

__all__ = ["DefenseGANDetector", "WGANGPNet"]


class WGANGPNet(NeuralNet):
    """skorch ``NeuralNet`` training a :class:`~advdetect.nn.gan.WGAN` by WGAN-GP.

    Gulrajani et al. 2017, Algorithm 1: every training batch is one critic
    step on ``D(G(z)) - D(x) + gradient_penalty * GP``; every
    ``critic_iters``-th batch is also followed by one generator step on
    ``-D(G(z))``. The generator (``module_.generator``) is updated by
    ``optimizer_``, the critic by ``critic_optimizer_`` (same class and
    settings). The ``criterion`` is unused (skorch requires one). The
    recorded ``train_loss`` is the critic's loss (an estimate of minus the
    Wasserstein distance, plus the penalty).

    Parameters
    ----------
    *args, **kwargs
        As for :class:`skorch.NeuralNet`; ``module`` must be a ``WGAN``.
    critic_iters : int, default=5
        Critic steps per generator step (the reference: 5).
    gradient_penalty : float, default=10.0
        λ of the penalty (the reference: 10).
    """

    def __init__(self, *args, critic_iters=5, gradient_penalty=10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.critic_iters = critic_iters
        self.gradient_penalty = gradient_penalty

    def initialize_optimizer(self, *args, **kwargs):
        gen = self.module_.generator.named_parameters()
        a, kw = self.get_params_for_optimizer("optimizer", gen)
        self.optimizer_ = self.optimizer(*a, **kw)
        critic = self.module_.critic.named_parameters()
        a, kw = self.get_params_for_optimizer("optimizer", critic)
        self.critic_optimizer_ = self.optimizer(*a, **kw)
        self.critic_steps_ = 0
        return self

    def train_step(self, batch, **fit_params):
        self._set_training(True)
        Xi, _ = unpack_data(batch)
        real = to_tensor(Xi, device=self.device)
        gan = self.module_
        z = torch.randn(len(real), gan.latent_dim, device=real.device)
        fake = gan.generator(z).detach()
        loss = gan.critic(fake).mean() - gan.critic(real).mean()
        if self.gradient_penalty:
            loss = loss + self.gradient_penalty * gradient_penalty(gan.critic, real, fake)
        self.critic_optimizer_.zero_grad()
        loss.backward()
        self.critic_optimizer_.step()
        self.critic_steps_ += 1
        if self.critic_steps_ % self.critic_iters == 0:
            z = torch.randn(len(real), gan.latent_dim, device=real.device)
            gen_loss = -gan.critic(gan.generator(z)).mean()
            self.optimizer_.zero_grad()
            gen_loss.backward()
            self.optimizer_.step()
            # The critic's gradients from the generator step are not used.
            self.critic_optimizer_.zero_grad()
        return {"loss": loss.detach(), "y_pred": fake}


class DefenseGANDetector(PurifierMixin, BaseDetector):
    """Defense-GAN: a WGAN generator's reconstruction error detects, its output purifies.

    Samangouei, Kabkab & Chellappa (ICLR 2018) train a Wasserstein GAN on
    clean images only. An input x is projected onto the range of the
    generator G: starting from L random latent vectors, R steps of gradient
    descent on ``||G(z) - x||^2`` each, and the best of the L results is
    ``z*`` (Eq. 8). A clean image lies near the range and is reconstructed
    closely; an adversarial perturbation lies off it, so the reconstruction
    error ``||G(z*) - x||_2^2`` grows (Section 3.5, the detection rule).
    :meth:`transform` returns ``G(z*)``, the purified input the paper hands
    to the classifier. Model-agnostic like MagNet: it takes no classifier.

    The GAN is the authors' WGAN-GP (Gulrajani et al. 2017: the Wasserstein
    loss with a gradient penalty instead of weight clipping), which is also
    what their code trains on MNIST (``MODE: 'wgan-gp'``); the paper's text
    says "WGAN". We use it for the same reason they did: clipping the critic's
    weights makes training slow and unstable, the penalty does not.

    Parameters
    ----------
    n_restarts : int, default=4
        L, random restarts of the latent search (the paper's MNIST: 10).
    n_steps : int, default=50
        R, gradient-descent steps per restart (the paper's MNIST: 200).
    search_lr : float, default=10.0
        Step size of the search on the per-pixel mean squared error (the
        authors' code: 10, with momentum 0.7).
    search_momentum : float in [0, 1), default=0.7
    latent_dim : int, default=32
        Size of z (the reference: 128).
    width : int, default=8
        Channel width w of generator and critic (the reference: 64; see Notes).
    critic_iters : int, default=5
        Critic steps per generator step (the reference: 5).
    gradient_penalty : float, default=10.0
        λ of WGAN-GP (the reference: 10).
    fpr : float in [0, 1), default=0.01
        Fraction of the clean held-out images flagged: ``offset_`` is the
        ``fpr``-quantile of their scores (``method="lower"``: at most that
        fraction falls strictly below).
    validation_fraction : float in [0, 1), default=0.1
        Fraction of the clean training data held out of GAN training to set
        the threshold on (``0``: set it on the training images).
    input_shape : tuple, "flat" or None, default=None
        Shape (C, H, W) of one image, needed for flat 2-D input; ``"flat"``
        treats rows as vectors (small perceptrons are then used).
    input_range : (float, float) or None, default=(0.0, 1.0)
        Range of the inputs and of the generator's output (a scaled sigmoid);
        ``None``: any finite values, linear output.
    max_epochs : int, default=30
        Passes over the training images; each batch is one critic step, so a
        pass is ``n / batch_size`` critic and ``n / (batch_size *
        critic_iters)`` generator steps.
    batch_size : int, default=64
        Training batch, and images per scoring batch (each scoring batch runs
        ``batch_size * n_restarts`` latent vectors through G).
    lr : float, default=5e-4
        Adam's learning rate for generator and critic (betas (0.5, 0.9) as
        the reference; the reference's rate is 1e-4, for 200,000 steps).
    optimizer : torch optimizer class, default=torch.optim.Adam
    device : {"auto", "cpu", "cuda"}, default="auto"
    random_state : int or None, default=None
        Seeds the GAN's weights and noise, the shuffling, the validation split
        and the search's starting points; same seed, same scores on the CPU.
    verbose : int, default=0
        0 silent; 1 a progress bar; 2 skorch's epoch log too.

    Attributes
    ----------
    generator_ : WGANGenerator
        The trained generator (frozen, eval mode). The critic is not kept.
    latent_seed_ : int
        Seed of the starting points, N(0, I / latent_dim) as the authors'
        code; the same L points start every image's search, so an image's
        score does not depend on the images scored beside it.
    calibration_ : pandas.DataFrame
        Column ``"reconstruction_error"``, float64: ``||G(z*) - x||^2`` of the
        ``n_calibration_`` clean held-out images, indexed by their positions in
        ``fit``'s (clean) ``X`` (index name ``"image"``).
    n_calibration_ : int
        Number of clean held-out images the threshold was learned on.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    image_shape_ : tuple
    n_features_in_ : int

    See Also
    --------
    MagNetDetector : autoencoder reconstruction, the other model-agnostic purifier.

    Notes
    -----
    ``score_samples`` is ``-||G(z*) - x||_2^2`` (higher = cleaner); the
    paper's rule "flag when the error exceeds θ" is ``predict == -1`` with
    ``θ = -offset_``.

    **Cost, and why the defaults are small.** Scoring runs ``n_restarts *
    (n_steps + 1)`` generator passes (and ``n_restarts * n_steps`` backward
    passes) per image: the defaults 200 forward+backward passes of a
    ~0.4 M multiply-add generator (width 8, MNIST), the paper's recipe 2,000
    passes of a ~24 M one (width 64), about 600x the work. Measured on this
    project's 2-core CPU machine while shared with other jobs (load ~15): at
    width 32 the defaults scored 5.6 MNIST images/s, at width 8 12.7 images/s;
    at a lighter load ``benchmarks/bench_purifiers.py`` measured 211 images/s,
    69x the cost of the classifier's own forward pass (MNIST CNN, batch 256). Training: 30 epochs on 3,600 MNIST
    images (1,700 critic and 340 generator steps) took about 4 minutes
    there and gave digit-like reconstructions (ROC-AUC 0.98 against
    sign noise of 0.3 on clean test digits). The reference trains 200,000
    generator steps on 50,000 images, which a CPU cannot afford; raise
    ``max_epochs`` and ``width`` where you can. **Fewer steps fail**: with
    the same 30 epochs on 1,800 images (850 critic, 170 generator steps)
    G(z*) was not yet digit-like, and FGSM images scored *cleaner* than clean
    ones (ROC-AUC 0.15-0.25, ``docs/benchmarks/purifiers-30-epochs``). On
    fewer images raise ``max_epochs`` so that ``max_epochs * n_train /
    batch_size`` stays above ~1,700.

    Differences from the reference code, and why:

    * The L starting points are shared by all images (drawn from
      ``latent_seed_``) rather than drawn per image: statistically the same
      search per image, and scores that do not depend on batch composition.
    * The reference decays the search's learning rate by 10 after 80 % of
      the steps in its configuration, but the decay is keyed to a counter
      the loop never advances; we use a constant step, as it effectively does.
    * The detection threshold is learned from held-out clean images at a
      target false-positive rate (the paper picks θ by hand per dataset).

    References
    ----------
    P. Samangouei, M. Kabkab, R. Chellappa. Defense-GAN: Protecting
    Classifiers Against Adversarial Attacks Using Generative Models. ICLR 2018.
    I. Gulrajani, F. Ahmed, M. Arjovsky, V. Dumoulin, A. Courville. Improved
    Training of Wasserstein GANs. NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from advdetect import DefenseGANDetector
    >>> X = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    >>> det = DefenseGANDetector(max_epochs=1, n_restarts=2, n_steps=3, width=4,
    ...                          latent_dim=4, device="cpu", random_state=0).fit(X)
    >>> det.predict(X[:3]).shape, det.transform(X[:3]).shape
    ((3,), (3, 1, 8, 8))
    >>> list(det.reconstruction_errors(X[:3]).columns[:2])
    ['reconstruction_error', 'score']
    """

    PAPER_PARAMS = dict(n_restarts=10, n_steps=200, search_lr=10.0, search_momentum=0.7,
                        latent_dim=128, width=64, critic_iters=5, gradient_penalty=10.0,
                        batch_size=50, lr=1e-4)

    _parameter_constraints = {
        **BaseDetector._shared_constraints("validation_fraction", "input_shape",
                                           "input_range", "max_epochs", "batch_size", "lr",
                                           "optimizer", "device", "random_state", "verbose"),
        # The counts refuse bools too: _check_params.
        "n_restarts": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_steps": [Interval(numbers.Integral, 0, None, closed="left")],
        # [0, inf]: any number >= 0, as before the constraints.
        "search_lr": [Interval(numbers.Real, 0, None, closed="both")],
        "search_momentum": [Interval(numbers.Real, 0, 1, closed="left")],
        "latent_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "width": [Interval(numbers.Integral, 1, None, closed="left")],
        "critic_iters": [Interval(numbers.Integral, 1, None, closed="left")],
        "gradient_penalty": [Interval(numbers.Real, 0, None, closed="both")],
        "fpr": [Interval(numbers.Real, 0, 1, closed="left")],
    }

    def __init__(self, *, n_restarts=4, n_steps=50, search_lr=10.0,
                 search_momentum=0.7, latent_dim=32, width=8, critic_iters=5,
                 gradient_penalty=10.0, fpr=0.01, validation_fraction=0.1, input_shape=None,
                 input_range=(0.0, 1.0), max_epochs=30, batch_size=64, lr=5e-4,
                 optimizer=torch.optim.Adam, device="auto", random_state=None, verbose=0):
        self.n_restarts = n_restarts
        self.n_steps = n_steps
        self.search_lr = search_lr
        self.search_momentum = search_momentum
        self.latent_dim = latent_dim
        self.width = width
        self.critic_iters = critic_iters
        self.gradient_penalty = gradient_penalty
        self.fpr = fpr
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.input_range = input_range
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def paper(cls, **params):
        """A detector with the paper's MNIST recipe (the authors' code's settings).

        L = 10 restarts of R = 200 steps (step 10, momentum 0.7), latent size
        128, width 64, WGAN-GP with 5 critic steps per generator step and
        λ = 10, Adam 1e-4 with batch 50. The reference trains 200,000
        generator steps; set ``max_epochs`` to what your machine affords.

        Parameters
        ----------
        **params
            Any constructor parameter (they override the recipe).

        Returns
        -------
        DefenseGANDetector
            Unfitted.

        Examples
        --------
        >>> from advdetect import DefenseGANDetector
        >>> det = DefenseGANDetector.paper(max_epochs=5)
        >>> det.n_restarts, det.n_steps, det.latent_dim, det.max_epochs
        (10, 200, 128, 5)
        """
        return super().paper(**params)

    # ------------------------------------------------------------ parameters
    def _check_params(self):
        super()._check_params()
        # Interval(Integral, ...) admits True and False (bool is an int subclass);
        # these counts never did.
        for name in ("n_restarts", "n_steps", "latent_dim", "width", "critic_iters"):
            if isinstance(getattr(self, name), bool):
                raise invalid_parameter(self, name, "an int, not a bool")

    # ------------------------------------------------------------------ fit
    _threshold_params = ("fpr",)
    _networks = ("generator_",)
    _fitted_values = ("latent_seed_",)

    def _prepare(self, X, y):
        """Defense-GAN does not read the classifier: no copy of it is made."""

    def _build_wgan(self):
        return WGAN(image_shape=self.image_shape_, latent_dim=int(self.latent_dim),
                    width=int(self.width), value_range=self._value_range)

    @staticmethod
    def _frozen_generator(gan):
        return gan.generator.eval().requires_grad_(False)

    def _build(self):
        self.generator_ = self._frozen_generator(self._build_wgan()).to(self.device_)

    def _train(self, X, y, fit_idx, cal_idx, rng):
        extra = {}
        if self.optimizer in (torch.optim.Adam, torch.optim.AdamW):
            extra["optimizer__betas"] = (0.5, 0.9)  # the reference's Adam settings
        gan = train_module(
            self._build_wgan(), X[fit_idx], None, torch.nn.MSELoss,
            desc="Defense-GAN WGAN-GP", detector=self, net_cls=WGANGPNet,
            critic_iters=int(self.critic_iters), gradient_penalty=float(self.gradient_penalty),
            **extra)
        self.generator_ = self._frozen_generator(gan).to(self.device_)
        self.latent_seed_ = int(rng.integers(0, 2**31 - 1))

    def _set_thresholds(self):
        errors = self.calibration_["reconstruction_error"].to_numpy()
        self.n_calibration_ = len(errors)
        self.offset_ = float(np.quantile(-errors, self.fpr, method="lower"))

    # -------------------------------------------------------------- forward
    def _latent_start(self):
        gen = torch.Generator().manual_seed(self.latent_seed_)
        z0 = torch.randn(int(self.n_restarts), self.generator_.latent_dim, generator=gen)
        return z0 / np.sqrt(self.generator_.latent_dim)

    def _search(self, xb):
        """``(G(z*), ||G(z*) - x||^2)`` of one batch."""
        rec, _ = latent_search(self.generator_, xb, self._latent_start(), int(self.n_steps),
                               float(self.search_lr), float(self.search_momentum))
        return rec, (rec - xb).pow(2).flatten(1).sum(1)

    def _forward_batch(self, xb, every=False):
        return {"reconstruction_error": self._search(xb)[1]}

    def _score(self, metrics):
        """Minus the squared L2 distance to the generator's range (Samangouei et al. 2018, Eq. 6)."""
        return -metrics["reconstruction_error"]

    # --------------------------------------------------------------- extras
    def reconstruct(self, X):
        """``G(z*)`` of every image: its projection onto the generator's range.

        Parameters
        ----------
        X : array-like of images

        Returns
        -------
        ndarray of shape (n_samples, C, H, W), float32
        """
        return self._map_batches(X, lambda xb: self._search(xb)[0])

    def to_torch(self):
        """The decision function as a ``torch.nn.Module``: ``forward(x)`` -> ``(n,)``.

        ``forward(x)`` equals :meth:`decision_function` (up to float32 rounding,
        which depends on the batch) for ``x`` a float32 tensor of images in
        the fitted shape, on the detector's device. The module is in eval mode
        with frozen parameters (a copy of the generator); the latent search
        inside runs with autograd switched on even under ``torch.no_grad()``,
        and the gradient with respect to ``x`` holds ``z*`` fixed (see
        :class:`~advdetect.nn.gan.DefenseGANDecision`).

        Returns
        -------
        advdetect.nn.gan.DefenseGANDecision

        Raises
        ------
        sklearn.exceptions.NotFittedError
            When the detector is not fitted.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from advdetect import DefenseGANDetector
        >>> X = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
        >>> det = DefenseGANDetector(max_epochs=1, n_restarts=2, n_steps=3, width=4,
        ...                          latent_dim=4, device="cpu", random_state=0).fit(X)
        >>> module = det.to_torch()
        >>> out = module(torch.as_tensor(X[:4]))
        >>> out.shape, bool(np.allclose(out.detach().numpy(), det.decision_function(X[:4]),
        ...                             rtol=1e-4, atol=1e-4))
        (torch.Size([4]), True)
        """
        check_is_fitted(self)
        module = DefenseGANDecision(copy.deepcopy(self.generator_), self._latent_start(),
                                    self.n_steps, self.search_lr, self.search_momentum,
                                    self.offset_, self.image_shape_)
        module = module.to(self.device_).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

