"""Fits the polynomials of the AVX2 e^x and tanh (kernels/cpu/spmm_avx2.c) for the least
largest relative error, by Lawson's iteratively reweighted least squares on Chebyshev
points, in double precision:

  exp:  e^r = 1 + r + r^2 q(r) for |r| <= ln2 / 2 (exp_n_avx2), q of degree 4 by default;
  tanh: tanh(x) = x P(x^2) / Q(x^2) for |x| <= 9 (tanh_avx2), P(0) = Q(0) = 1, P and Q of
        degree 4 by default; the rational fit is linearised (Loeb: each pass weighs the
        residual P - t Q by 1 / Q of the pass before), about half a minute.

    python3 kernels/cpu/fit_poly.py exp|tanh [DEGREE]

prints the largest relative error of the fit and the coefficients, highest power first,
in the order the C code's Horner steps use them (for tanh, P's then Q's, without the
constant 1s).
"""
import sys

import numpy as np


def lawson(v, target, scale, passes=400):
    """Coefficients c minimising max |(v c - target) * scale|."""
    w = np.full(len(target), 1.0 / len(target))
    for _ in range(passes):
        sw = np.sqrt(w) * scale
        c, *_ = np.linalg.lstsq(v * sw[:, None], target * sw, rcond=None)
        w = w * np.abs((v @ c - target) * scale)
        w /= w.sum()
    return c, np.abs((v @ c - target) * scale).max()


def fit_tanh(degree, limit=9.0):
    """P's and Q's coefficients of z = x^2 from 1 to degree, and the largest error."""
    x = np.cos(np.linspace(0, np.pi / 2, 30001)) * limit
    x = x[x > 1e-4]
    u = (x / limit) ** 2  # z scaled to [0, 1]: powers of z up to 81^4 would be ill-conditioned
    t = np.tanh(x) / x
    vu = np.vander(u, degree + 1, increasing=True)[:, 1:]
    # P(u) - t Q(u) = 0 with the constant terms moved right: [vu | -t vu] c = t - 1
    a = np.hstack([vu, -t[:, None] * vu])
    q = np.ones_like(u)
    for _ in range(40):
        c, _ = lawson(a, t - 1, 1.0 / (t * q), 100)
        q = 1 + vu @ c[degree:]
    err = np.abs((1 + vu @ c[:degree]) / q - t) / t
    unscale = limit ** (-2.0 * np.arange(1, degree + 1))
    return c[:degree] * unscale, c[degree:] * unscale, err.max()


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "exp":
        degree = int(sys.argv[2]) if len(sys.argv) > 2 else 4
        a = np.log(2) / 2 * 1.0005  # a little past ln2 / 2: the reduction rounds
        r = np.cos(np.linspace(0, np.pi, 20001)) * a
        r = r[np.abs(r) > 1e-6]  # q's target is 0/0 at r = 0
        target = (np.expm1(r) - r) / r**2
        scale = r**2 / np.exp(r)  # an error in q as a relative error in e^r
        v = np.vander(r, degree + 1, increasing=True)
    elif kind == "tanh":
        degree = int(sys.argv[2]) if len(sys.argv) > 2 else 4
        p, q, err = fit_tanh(degree)
        print("tanh, P and Q of degree %d: largest relative error %.3g" % (degree, err))
        print("P: " + ", ".join("%.10e" % x for x in p[::-1]))
        print("Q: " + ", ".join("%.10e" % x for x in q[::-1]))
        return
    else:
        sys.exit("usage: fit_poly.py exp|tanh [DEGREE]")
    c, err = lawson(v, target, scale)
    print("%s, degree %d: largest relative error %.3g" % (kind, degree, err))
    print(", ".join("%.10e" % x for x in c[::-1]))


if __name__ == "__main__":
    main()
