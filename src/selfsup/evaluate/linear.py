"""Linear probe on frozen, cached features: multinomial logistic regression (scikit-learn,
L-BFGS) on standardised features, the L2 strength chosen on a stratified validation split and the
final model refit on train + val (the AugSelf / SimCLR transfer protocol)."""

from __future__ import annotations

import warnings

import numpy as np

from ..data.splits import stratified_split

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))


def _fit(clf, x, y, c):
    from sklearn.exceptions import ConvergenceWarning

    clf.set_params(C=c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def linear_probe(train_feats, train_labels, test_feats, test_labels, val_fraction: float = 0.2,
                 cs=DEFAULT_CS, seed: int = 0, max_iter: int = 500,
                 return_predictions: bool = False) -> dict:
    """Returns {'linear_acc', 'linear_val_acc', 'linear_C'} (and 'predictions' on the test
    features when asked); C = 1 / L2 strength."""
    # imported here: scikit-learn (with scipy) costs ~2 s at start-up, and training, predict
    # and export never probe
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(train_feats, np.float32), np.asarray(train_labels)
    xt, yt = np.asarray(test_feats, np.float32), np.asarray(test_labels)
    tr, va = stratified_split(y, val_fraction, seed)
    if len(va) == 0 or len(np.unique(y[tr])) < 2:
        best_c, best_val = 1.0, float("nan")
    else:
        scaler = StandardScaler().fit(x[tr])
        xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
        # sweep C upwards, each fit warm-started from the last: same optima, ~2x faster
        clf = LogisticRegression(max_iter=max_iter, tol=1e-4, warm_start=True)
        results = [(float((_fit(clf, xtr, y[tr], c).predict(xva) == y[va]).mean()), -c, c)
                   for c in sorted(cs)]
        best_val, _, best_c = max(results)  # ties -> the stronger regularisation
    scaler = StandardScaler().fit(x)
    clf = _fit(LogisticRegression(max_iter=max_iter, tol=1e-4), scaler.transform(x), y, best_c)
    pred = clf.predict(scaler.transform(xt))
    out = {"linear_acc": float((pred == yt).mean()), "linear_val_acc": best_val, "linear_C": best_c}
    if return_predictions:
        out["predictions"] = pred
    return out
