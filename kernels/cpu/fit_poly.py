"""Fits the polynomials of the AVX2 e^x and tanh (kernels/cpu/spmm_avx2.c) for the least
largest relative error, by Lawson's iteratively reweighted least squares on 20,000
Chebyshev points, in double precision:

  exp:  e^r = 1 + r + r^2 q(r) for |r| <= ln2 / 2 (exp_n_avx2), q of degree 4 by default;
  tanh: tanh(x) = x + x^3 p(x^2) for |x| < 0.625 (tanh_from_exp_avx2's small side), p of
        degree 3 by default.

    python3 kernels/cpu/fit_poly.py exp|tanh [DEGREE]

prints the largest relative error of the fit and the coefficients, highest power first,
in the order the C code's Horner steps use them.
"""
import sys

import numpy as np


def lawson(v, target, scale):
    """Coefficients c minimising max |(v c - target) * scale|."""
    w = np.full(len(target), 1.0 / len(target))
    for _ in range(400):
        sw = np.sqrt(w) * scale
        c, *_ = np.linalg.lstsq(v * sw[:, None], target * sw, rcond=None)
        w = w * np.abs((v @ c - target) * scale)
        w /= w.sum()
    return c, np.abs((v @ c - target) * scale).max()


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
        degree = int(sys.argv[2]) if len(sys.argv) > 2 else 3
        x = np.cos(np.linspace(0, np.pi / 2, 20001)) * 0.625
        x = x[x > 1e-4]  # p's target is 0/0 at x = 0
        target = (np.tanh(x) - x) / x**3
        scale = x**3 / np.tanh(x)  # an error in p as a relative error in tanh(x)
        v = np.vander(x * x, degree + 1, increasing=True)
    else:
        sys.exit("usage: fit_poly.py exp|tanh [DEGREE]")
    c, err = lawson(v, target, scale)
    print("%s, degree %d: largest relative error %.3g" % (kind, degree, err))
    print(", ".join("%.10e" % x for x in c[::-1]))


if __name__ == "__main__":
    main()
