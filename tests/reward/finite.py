"""A finite response space (2 prompts x 5 responses) where the reward posterior, every
objective's exact gradient and the exact expectation of every n-sample estimator are
computable by enumeration; the enumeration formulas here are written from the papers,
independently of ppl's implementation (numpy, gradients of log-softmax logits)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import ppl

B, V, BETA = 2, 5, 0.7
P_REF = np.array([[0.4, 0.25, 0.15, 0.12, 0.08], [0.1, 0.2, 0.3, 0.25, 0.15]])
R = np.array([[-1.0, 0.2, 0.9, 0.4, 1.5], [0.8, -0.5, 0.0, 1.2, -0.3]])
PROMPTS = jnp.arange(B)
LOGITS = np.array([[0.3, -0.2, 0.1, 0.5, -0.4], [-0.1, 0.4, 0.2, -0.3, 0.0]])


def reference(prompts):
    with numpyro.plate("prompts", prompts.shape[0]):
        return numpyro.sample("y", dist.Categorical(probs=jnp.asarray(P_REF)[prompts]))


def reward(y, prompts):
    return jnp.asarray(R)[prompts, y]


def guide(prompts):
    logits = numpyro.param("logits", jnp.zeros((B, V)))
    with numpyro.plate("prompts", prompts.shape[0]):
        return numpyro.sample("y", dist.Categorical(logits=logits[prompts]))


def other_proposal(prompts):  # uniform
    with numpyro.plate("prompts", prompts.shape[0]):
        return numpyro.sample("y", dist.Categorical(logits=jnp.zeros((prompts.shape[0], V))))


TARGET = ppl.reward.posterior(reference, reward, beta=BETA, response_ndim=0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def exact_posterior(likelihood="exp"):
    loglik = R / BETA if likelihood == "exp" else -np.logaddexp(0, -R / BETA)
    return softmax(np.log(P_REF) + loglik)


def grad_log_q(q, y):
    """d log softmax(logits)[y] / d logits = e_y - q, for a batch of y: (..., V)."""
    return np.eye(V)[y] - q


def objective_grad(loss, logits=LOGITS, model=TARGET, **kwargs):
    """key -> gradient of the (maximized) objective w.r.t. the logits, (B, V)."""

    def estimate(key):
        return jax.grad(
            lambda lg: -loss.loss(key, {"logits": lg}, model, guide, PROMPTS, **kwargs)
        )(jnp.asarray(logits))

    return estimate


def expected_estimator(coef_fn, slot_probs, logits=LOGITS):
    """Exact E[sum_i c_i grad log q(y_i)] over y_i ~ slot_probs[i] (independent), by
    enumerating all V^n tuples per prompt. coef_fn(ys (T, n), b) -> (T, n)."""
    q = softmax(logits)
    n = len(slot_probs)
    ys = np.array(list(itertools.product(range(V), repeat=n)))  # (T, n)
    out = np.zeros((B, V))
    for b in range(B):
        prob = np.prod([slot_probs[i][b][ys[:, i]] for i in range(n)], axis=0)  # (T,)
        c = coef_fn(ys, b)  # (T, n)
        g = np.einsum("tn,tnv->tv", c, grad_log_q(q[b], ys))
        out[b] = prob @ g
    return out


def log_target(b, y, likelihood="exp"):
    loglik = R[b, y] / BETA if likelihood == "exp" else -np.logaddexp(0, -R[b, y] / BETA)
    return np.log(P_REF[b, y]) + loglik


def normalize_log(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


F_PRIME = {  # f'(t) for D_f(pi || p) = E_p[f(pi / p)]
    "forward_kl": lambda t: -1.0 / t,
    "reverse_kl": lambda t: np.log(t) + 1.0,
    "js": lambda t: 0.5 * np.log(2 * t / (1 + t)),
    "tv": lambda t: 0.5 * np.sign(t - 1),
    "alpha": lambda t: (t ** (0.5 - 1) - 1) / (0.5 - 1),
}


def is_coefficients(kind, log_qprime, logits=LOGITS):
    """coef_fn for the importance-sampled objectives (n samples from q', log q' given as a
    function (b, y) -> array): the gradient of the maximized objective is sum_i c_i grad log q."""
    lq = np.log(softmax(logits))

    def coef(ys, b):
        n = ys.shape[1]
        la = normalize_log(log_target(b, ys) - log_qprime(b, ys))
        lb = normalize_log(lq[b, ys] - log_qprime(b, ys))
        a, bh = np.exp(la), np.exp(lb)
        if kind == "brain":
            return a - bh
        if kind == "dpg":
            return a
        if kind == "gdcpp":
            return a - np.exp(lq[b, ys] - log_qprime(b, ys)) / n
        g = bh * F_PRIME[kind](np.exp(lb - la))
        return -(g - bh * g.sum(1, keepdims=True))

    return coef


def exact_divergence_grad(kind, logits=LOGITS, likelihood="exp"):
    """-grad D_f(q || post) = -E_q[f'(q / post) grad log q] (forward_kl: post - q)."""
    q, post = softmax(logits), exact_posterior(likelihood)
    out = np.zeros((B, V))
    for b in range(B):
        fp = F_PRIME[kind](q[b] / post[b])
        out[b] = -(q[b] * fp) @ grad_log_q(q[b], np.arange(V))
    return out
