"""Fits the polynomial of the AVX2 e^x (exp_n_avx2 in kernels/cpu/spmm_avx2.c): e^r is
1 + r + r^2 q(r) for |r| <= ln2 / 2, and q, of degree DEGREE (default 4), is chosen for
the least largest relative error over that range, by Lawson's iteratively reweighted
least squares on 20,000 Chebyshev points, in double precision.

    python3 kernels/cpu/fit_exp.py [DEGREE]

prints the largest relative error of the fit and q's coefficients, highest power first,
in the order the C code's Horner steps use them.
"""
import sys

import numpy as np


def main():
    degree = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    a = np.log(2) / 2 * 1.0005  # a little past ln2 / 2: the reduction rounds
    r = np.cos(np.linspace(0, np.pi, 20001)) * a
    r = r[np.abs(r) > 1e-6]  # q's target below is 0/0 at r = 0
    target = (np.expm1(r) - r) / r**2
    scale = r**2 / np.exp(r)  # turns an error in q into a relative error in e^r
    v = np.vander(r, degree + 1, increasing=True)
    w = np.full(len(r), 1.0 / len(r))
    for _ in range(400):
        sw = np.sqrt(w) * scale
        c, *_ = np.linalg.lstsq(v * sw[:, None], target * sw, rcond=None)
        err = np.abs((v @ c - target) * scale)
        w = w * err
        w /= w.sum()
    err = np.abs((v @ c - target) * scale)
    print("q of degree %d: largest relative error of e^r %.3g" % (degree, err.max()))
    print(", ".join("%.10e" % x for x in c[::-1]))


if __name__ == "__main__":
    main()
