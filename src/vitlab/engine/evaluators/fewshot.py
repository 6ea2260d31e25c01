"""Few-shot linear probes on frozen features, the comparison of CLIP's Fig. 6 (zero-shot vs k labelled shots).

For each k, k examples of every class are drawn from a labelled pool (seeded, `repeats` draws), an L2-regularised
logistic regression (scikit-learn, L-BFGS) is fitted on their unit-normalised features, and its accuracy on the test
features is averaged over the draws. The CLIP paper sweeps the regularisation C on a validation split; here the
sweep (CS) is a stratified cross-validation on the k shots themselves (min(k, 5) folds), so the test split never
chooses C. One shot per class leaves nothing to validate on: it uses C_ONE_SHOT.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FewShotResult", "few_shot_probe", "parse_shots"]

CS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # the regularisation strengths swept (C = 1 / lambda)
C_ONE_SHOT = 10.0


@dataclass
class FewShotResult:
    shots: list[int]
    mean: list[float]  # test accuracy per k, mean over the draws
    std: list[float]
    repeats: int
    C: list[float]  # per k, the median C the cross-validation chose over the draws

    def as_dict(self) -> dict:
        return {"shots": self.shots, "accuracy": self.mean, "std": self.std, "repeats": self.repeats, "C": self.C}


def parse_shots(spec: str) -> list[int]:
    """'1,2,4,8,16' -> [1, 2, 4, 8, 16]; a ConfigError for anything else."""
    from vitlab.errors import ConfigError

    try:
        shots = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--few-shot takes comma-separated shot counts such as 1,2,4,8,16, got {spec!r}") from None
    if not shots or shots[0] < 1:
        raise ConfigError(f"--few-shot shot counts must be >= 1, got {spec!r}")
    return shots


def few_shot_probe(
    pool_x: torch.Tensor, pool_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, shots: Sequence[int],
    repeats: int = 3, seed: int = 0,
) -> FewShotResult:  # fmt: skip
    """Accuracy on (test_x, test_y) of logistic regressions fitted on k shots per class of (pool_x, pool_y).

    Features are (N, D); labels (N,) in 0..K-1. Every class must have at least max(shots) examples in the pool.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    px = torch.nn.functional.normalize(pool_x.float(), dim=-1).numpy()
    tx = torch.nn.functional.normalize(test_x.float(), dim=-1).numpy()
    py, ty = pool_y.numpy(), test_y.numpy()
    classes = np.unique(np.concatenate([py, ty]))
    by_class = {c: np.flatnonzero(py == c) for c in classes}
    short = {int(c): len(i) for c, i in by_class.items() if len(i) < max(shots)}
    if short:
        raise ValueError(f"{max(shots)} shots per class need as many pool examples; classes {short} have fewer")
    rng = np.random.default_rng(seed)
    means, stds, chosen = [], [], []
    for k in shots:
        accs, cs = [], []
        for r in range(repeats):
            idx = np.concatenate([rng.choice(by_class[c], k, replace=False) for c in classes])
            if k == 1:
                clf = LogisticRegression(C=C_ONE_SHOT, max_iter=1000)
            else:
                folds = StratifiedKFold(min(k, 5), shuffle=True, random_state=seed + r)
                clf = LogisticRegressionCV(Cs=list(CS), cv=folds, scoring="accuracy", max_iter=1000)
            with warnings.catch_warnings():  # scikit-learn 1.9 announces changes of defaults that do not apply here
                warnings.simplefilter("ignore", FutureWarning)
                clf.fit(px[idx], py[idx])
            accs.append(float((clf.predict(tx) == ty).mean()))
            cs.append(C_ONE_SHOT if k == 1 else float(np.atleast_1d(clf.C_)[0]))
        means.append(float(np.mean(accs)))
        stds.append(float(np.std(accs)))
        chosen.append(float(np.median(cs)))
    return FewShotResult(list(shots), means, stds, repeats, chosen)


def plot_few_shot(result: FewShotResult, zero_shot: float, chance: float, title: str, path) -> None:
    """Accuracy vs shots per class (log x), zero-shot as a horizontal line, as in CLIP's Fig. 6."""
    from vitlab.engine.report import new_figure, save_figure

    fig = new_figure(5.5, 3.6)
    ax = fig.subplots()
    m, s = np.array(result.mean), np.array(result.std)
    ax.plot(result.shots, m, "o-", label=f"linear probe (mean of {result.repeats} draws)")
    ax.fill_between(result.shots, m - s, m + s, alpha=0.2)
    ax.axhline(zero_shot, color="tab:orange", label=f"zero-shot {zero_shot:.3f}")
    ax.axhline(chance, color="tab:grey", ls=":", label=f"chance {chance:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(result.shots, [str(k) for k in result.shots])
    ax.set(xlabel="labelled examples per class", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
