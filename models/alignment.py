"""A small end-to-end alignment task whose reward posterior is exactly computable.

Prompts are 2 tokens, responses 4 tokens over a vocabulary of 4 (256 responses per
prompt, 16 prompts). Everything is generated and trained here, on CPU in about a minute:

* SFT data from a known generative rule (the first token copies the prompt's first token,
  each next one adds the prompt's second token, with noise); the reference policy is a
  :class:`ppl.reward.TinyTransformer` trained on it by maximum likelihood (SFT).
* Preference pairs between SFT responses, labelled by a hidden true reward through the
  Bradley–Terry model; a Bradley–Terry reward model (an Equinox MLP) is fit to them.
* The reward posterior p_ref(y | x) exp(r(x, y) / β) is a :func:`ppl.reward.posterior`
  model; its exact distribution is computed by enumerating the 256 responses.

``evaluate(task, params)`` measures a policy exactly: KL(posterior ‖ policy), the
expected learned and true rewards, KL(policy ‖ reference).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ppl

VOCAB, LENGTH, PROMPT_LEN = 4, 4, 2
BETA = 0.5
PROMPTS = jnp.asarray(ppl.reward.all_sequences(VOCAB, PROMPT_LEN))  # (16, 2)
RESPONSES = jnp.asarray(ppl.reward.all_sequences(VOCAB, LENGTH))  # (256, 4)


def sft_log_probs(prompts=PROMPTS, follow: float = 0.55):
    """Exact log p_data(y | x) of the SFT data's generative rule, (B, 256)."""
    rest = (1.0 - follow) / (VOCAB - 1)
    x0, x1 = prompts[:, :1], prompts[:, 1:2]
    b, n = len(prompts), RESPONSES.shape[0]
    y = jnp.broadcast_to(RESPONSES[None], (b, n, LENGTH))
    first = jnp.broadcast_to((x0 - x1)[:, None], (b, n, 1))  # so that y_0 wants x_0
    prev = jnp.concatenate([first, y[..., :-1]], -1)
    want = (prev + x1[:, None]) % VOCAB  # y_t wants y_(t-1) + x_1
    hit = y == want
    return jnp.sum(jnp.where(hit, jnp.log(follow), jnp.log(rest)), axis=-1)


def true_reward(prompts, responses):
    """The hidden reward behind the preferences: tokens equal to 3, no immediate repeats,
    and ending on the prompt's first token. Shapes (..., 2), (..., 4) -> (...)."""
    threes = jnp.sum(responses == 3, axis=-1)
    repeats = jnp.sum(responses[..., 1:] == responses[..., :-1], axis=-1)
    ending = responses[..., -1] == prompts[..., 0]
    return 0.8 * threes - 1.0 * repeats + 1.0 * ending


class RewardModel(eqx.Module):
    """r(x, y): an MLP on the one-hot prompt and response tokens."""

    mlp: eqx.nn.MLP

    def __init__(self, key, width=64):
        size = VOCAB * (PROMPT_LEN + LENGTH)
        self.mlp = eqx.nn.MLP(size, "scalar", width, 2, activation=jax.nn.gelu, key=key)

    def __call__(self, prompt, response):
        x = jax.nn.one_hot(jnp.concatenate([prompt, response]), VOCAB).reshape(-1)
        return self.mlp(x)


def batched_reward(net):
    """``reward(y, prompts)`` for :func:`ppl.reward.posterior`: (B, L), (B, P) -> (B,)."""

    def reward(responses, prompts):
        return jax.vmap(net)(prompts, responses)

    return reward


def _fit(net, loss, steps, lr, key, sample_batch):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.adam(lr)

    def step(carry, k):
        params, state = carry
        value, grad = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), sample_batch(k)))(
            params
        )
        updates, state = opt.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), value

    (params, _), losses = jax.jit(lambda p, keys: jax.lax.scan(step, (p, opt.init(p)), keys))(
        params, jax.random.split(key, steps)
    )
    return eqx.combine(params, static), losses


def generate_sft(key, n):
    """n (prompt, response) pairs from the SFT rule."""
    k1, k2 = jax.random.split(key)
    x = jax.random.randint(k1, (n,), 0, len(PROMPTS))
    y = jax.random.categorical(k2, sft_log_probs()[x])
    return PROMPTS[x], RESPONSES[y]


def generate_preferences(key, n):
    """n (prompt, winner, loser) triples: two SFT responses, Bradley–Terry labels from the
    true reward."""
    k1, k2, k3 = jax.random.split(key, 3)
    prompts, y1 = generate_sft(k1, n)
    _, y2 = generate_sft(k2, n)
    y2 = jnp.where(jnp.all(y1 == y2, -1, keepdims=True), (y2 + 1) % VOCAB, y2)
    # re-draw y2's prompt pairing: both responses answer the same prompt
    p1 = jax.nn.sigmoid(true_reward(prompts, y1) - true_reward(prompts, y2))
    first = jax.random.uniform(k3, (n,)) < p1
    win = jnp.where(first[:, None], y1, y2)
    lose = jnp.where(first[:, None], y2, y1)
    return prompts, win, lose


def train_reference(key, steps=600, n=8000, batch=256):
    """SFT: a TinyTransformer trained by maximum likelihood on generated data."""
    k1, k2, k3 = jax.random.split(key, 3)
    prompts, responses = generate_sft(k1, n)
    net = ppl.reward.TinyTransformer(VOCAB, PROMPT_LEN + LENGTH, dim=32, layers=1, key=k2)

    def loss(net, idx):
        return -jnp.mean(ppl.reward.teacher_forced_log_prob(net, prompts[idx], responses[idx]))

    return _fit(net, loss, steps, 3e-3, k3, lambda k: jax.random.randint(k, (batch,), 0, n))


def train_reward_model(key, steps=800, n=6000, batch=256):
    """A Bradley–Terry reward model fit to generated preference pairs."""
    k1, k2, k3 = jax.random.split(key, 3)
    prompts, win, lose = generate_preferences(k1, n)
    net = RewardModel(k2)

    def loss(net, idx):
        rw = jax.vmap(net)(prompts[idx], win[idx])
        rl = jax.vmap(net)(prompts[idx], lose[idx])
        return -jnp.mean(jax.nn.log_sigmoid(rw - rl))

    return _fit(net, loss, steps, 3e-3, k3, lambda k: jax.random.randint(k, (batch,), 0, n))


class Task(NamedTuple):
    """The built task: networks, the posterior model, exact reference quantities."""

    reference_net: Any
    reward_net: Any
    reference: Any  # NumPyro program (fixed weights)
    target: Any  # the reward posterior model
    prompts: Any
    log_reference: Any  # (B, 256) exact log p_ref
    log_posterior: Any  # (B, 256) exact log posterior
    reward: Any  # (B, 256) learned reward
    true_reward: Any  # (B, 256)
    sft_loss: Any
    reward_loss: Any


def policy_log_probs(net, prompts=PROMPTS):
    """Exact log π(y | x) of every response, (B, 256), by teacher forcing."""
    b, n = prompts.shape[0], RESPONSES.shape[0]
    p = jnp.broadcast_to(prompts[:, None], (b, n, PROMPT_LEN)).reshape(-1, PROMPT_LEN)
    y = jnp.broadcast_to(RESPONSES[None], (b, n, LENGTH)).reshape(-1, LENGTH)
    return ppl.reward.teacher_forced_log_prob(net, p, y).reshape(b, n)


def build(key=None, quick: bool = False, beta: float = BETA) -> Task:
    """Generate the data, train reference and reward model, enumerate the posterior."""
    key = jax.random.PRNGKey(0) if key is None else key
    k1, k2 = jax.random.split(key)
    scale = 4 if quick else 1
    ref_net, sft_loss = train_reference(k1, steps=600 // scale)
    reward_net, reward_loss = train_reward_model(k2, steps=800 // scale)
    reference = ppl.reward.sequence_policy(ref_net, LENGTH, param=None)
    target = ppl.reward.posterior(reference, batched_reward(reward_net), beta=beta)
    log_ref = policy_log_probs(ref_net)
    b, n = PROMPTS.shape[0], RESPONSES.shape[0]
    p = jnp.broadcast_to(PROMPTS[:, None], (b, n, PROMPT_LEN))
    y = jnp.broadcast_to(RESPONSES[None], (b, n, LENGTH))
    r = jax.vmap(jax.vmap(reward_net))(p, y)
    log_post = jax.nn.log_softmax(log_ref + r / beta, axis=-1)
    return Task(
        ref_net, reward_net, reference, target, PROMPTS, log_ref, log_post, r,
        true_reward(p, y), sft_loss, reward_loss,
    )  # fmt: skip


def evaluate(task: Task, net) -> dict:
    """Exact metrics of a policy network, averaged over prompts."""
    lq = policy_log_probs(net, task.prompts)
    q, post = jnp.exp(lq), jnp.exp(task.log_posterior)
    return {
        "kl_posterior": float(jnp.mean(jnp.sum(post * (task.log_posterior - lq), -1))),
        "reward": float(jnp.mean(jnp.sum(q * task.reward, -1))),
        "true_reward": float(jnp.mean(jnp.sum(q * task.true_reward, -1))),
        "kl_reference": float(jnp.mean(jnp.sum(q * (lq - task.log_reference), -1))),
    }


def policy_net(task: Task, params: dict, name: str = "policy"):
    """The policy network with SVI's trained params (``name + '$params'``)."""
    static = eqx.partition(task.reference_net, eqx.is_inexact_array)[1]
    return eqx.combine(params[name + "$params"], static)


def data_summary(task: Task) -> dict:
    """How well reference and reward model fit their generated data."""
    exact_sft = sft_log_probs()
    kl_sft = jnp.mean(jnp.sum(jnp.exp(exact_sft) * (exact_sft - task.log_reference), -1))
    corr = np.corrcoef(np.asarray(task.reward).ravel(), np.asarray(task.true_reward).ravel())
    post = jnp.exp(task.log_posterior)
    ref = jnp.exp(task.log_reference)
    return {
        "kl_sft_data_to_reference": float(kl_sft),
        "reward_true_correlation": float(corr[0, 1]),
        "posterior_kl_to_reference": float(
            jnp.mean(jnp.sum(post * (task.log_posterior - task.log_reference), -1))
        ),
        "reference_reward": float(jnp.mean(jnp.sum(ref * task.reward, -1))),
        "posterior_reward": float(jnp.mean(jnp.sum(post * task.reward, -1))),
        "reference_true_reward": float(jnp.mean(jnp.sum(ref * task.true_reward, -1))),
        "posterior_true_reward": float(jnp.mean(jnp.sum(post * task.true_reward, -1))),
    }
