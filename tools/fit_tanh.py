"""Fits the rational tanh(x) ~ x P(x^2) / Q(x^2) on [0, 9] used by llmpy/gpt2/kernels.py.

Linear least squares in a Chebyshev basis with Lawson-style reweighting toward the largest relative
error, then converted to powers of x^2 for Horner evaluation. Prints the coefficients and the float32
error against float64 tanh. Run: python tools/fit_tanh.py
"""
import numpy as np
from numpy.polynomial import chebyshev as Ch
X = 9.0
p, q = 5, 3
x = (np.cos(np.linspace(0, np.pi, 40000)) * X / 2 + X / 2)[:-1]
t = np.tanh(x)
u = 2 * x * x / (X * X) - 1
TP = Ch.chebvander(u, p)  # columns T0..Tp
TQ = Ch.chebvander(u, q)
w = 1 / t
best = None
for it in range(30):
    A = np.concatenate([x[:, None] * TP, -t[:, None] * TQ[:, 1:]], 1)
    sol, *_ = np.linalg.lstsq(A * w[:, None], t * w, rcond=None)
    cp, cq = sol[:p + 1], np.concatenate([[1.0], sol[p + 1:]])
    approx = x * Ch.chebval(u, cp) / Ch.chebval(u, cq)
    rel = np.abs(approx - t) / t
    if best is None or rel.max() < best[0]:
        best = (rel.max(), cp, cq)
    w = w * (rel / rel.max()) ** 0.3 + 1e-300  # Lawson-ish reweighting toward the max error
print('best rel err', best[0])
_, cp, cq = best
# convert to power basis in x^2 for Horner: P(u) with u = a x^2 - 1
Pp = Ch.cheb2poly(cp); Qp = Ch.cheb2poly(cq)
from numpy.polynomial import polynomial as Po
a = 2 / (X * X)
def to_x2(c):  # c(u) with u = a*s - 1  -> coefficients in s
    res = np.zeros(len(c))
    for k, ck in enumerate(c):
        res[:k + 1] += ck * Po.polypow([-1, a], k)
    return res
Ps, Qs = to_x2(Pp), to_x2(Qp)
Ps, Qs = Ps / Qs[0], Qs / Qs[0]
print('P =', list(Ps)); print('Q =', list(Qs))
xf = np.linspace(-12, 12, 4000001).astype(np.float32)
xc = np.clip(xf, np.float32(-X), np.float32(X)); x2 = xc * xc
num = np.zeros_like(xc); den = np.zeros_like(xc)
for c in Ps[::-1]: num = num * x2 + np.float32(c)
for c in Qs[::-1]: den = den * x2 + np.float32(c)
r = xc * num / den
ref = np.tanh(xf.astype(np.float64))
print('f32 abs err', np.abs(r - ref).max(), 'rel', (np.abs(r - ref) / np.maximum(np.abs(ref), 1e-30)).max())
