"""The reinforcement-learning stage of RLHF (the DPO paper's Eq. 3) on the sentiment task: rollouts
sampled from the policy, scored by a reward model (or by the ground truth: the paper's PPO-GT
oracle), and PPO or RLOO updates under a KL penalty toward the reference. The math is in
methods/ppo.py; this file is the loop around it:

    for iteration in range(--steps):
        prompts  = --batch-size of the task's training prompts (a pure function of seed and
                 iteration)
        rollouts = --samples-per-prompt completions of each, sampled from the policy (KV cache,
        batched, T = 1)
        scores   = the reward model's score of each (PPO, RLOO) or the ground truth
                 (--ground-truth-reward)
        log pi_old, log pi_ref (and, for PPO, the value model's V_old) of the sampled tokens,
        without gradient
        PPO:  ppo.token_rewards -> ppo.gae -> whitened advantages -> --ppo-epochs x --minibatches
              clipped updates
        RLOO: sequence rewards -> ppo.rloo_advantages -> one REINFORCE step
        log; every --eval-every iterations: held-out reward and KL from samples; every --save-every:
        a checkpoint

Unlike DPO, every iteration samples from the policy (the most expensive part on a CPU), and PPO
holds four networks: the policy, the frozen reference, the reward model and the value model
(methods/ppo.py says why a separate one). The bookkeeping (config.json, metrics.jsonl, checkpoints)
is plumbing/run_dir.py's, as for every stage. --resume continues exactly: the checkpoint holds the
value model, its optimizer and the KL coefficient too, and the rollouts and minibatch orders are
pure functions of (seed, iteration). Left out: LoRA, torchrun.
"""

import copy

import torch

import data
import logprob_kernels
import sentiment
from loop import EPOCH_SEED_STRIDE, STEP_SEED_STRIDE, clip_and_step, example_indices
from methods import ppo, reward_model
from plumbing.checkpoint import CheckpointError
from plumbing.config import MAX_KL_COEF
from plumbing.run_dir import record, save, start_run


class Rollouts:
    """One iteration's samples in the collate layout, and what PPO and RLOO need of them (no
    gradient)."""

    def __init__(self, batch, scores, ground_truth, old_logprobs, ref_logprobs):
        # input_ids, labels (N, T) int64 and mask (N, T) bool, prompt + completion rows
        self.batch = batch
        # (N,) float32 what the policy is trained on: the reward model's score, or the truth
        self.scores = scores
        # (N,) float32 the sentiment task's reward of each completion
        self.ground_truth = ground_truth
        # (N, T) float32, 0 off the mask
        self.old_logprobs, self.ref_logprobs = old_logprobs, ref_logprobs

    def sequence_logratios(self):
        """log pi_old(y|x) - log pi_ref(y|x) of each rollout: (N,) float32, the KL's one-sample
        estimate."""
        return (self.old_logprobs - self.ref_logprobs).sum(dim=1)


def rollout_logprobs(model, batch, impl="auto"):
    """log pi of every label token under `model`, (N, T) float32, 0 off the mask; differentiable."""
    return logprob_kernels.token_logprobs(model(batch["input_ids"]), batch["labels"], batch["mask"],
                                          impl=impl)


@torch.no_grad()
def collect_rollouts(policy, reference, scorer, tokenizer, prompts, cfg, seed, run):
    """Sample --samples-per-prompt completions of each prompt from the policy and score them.

    scorer: a reward_model.RewardModel, or None for the ground truth. Returns Rollouts on the run's
    device, their log-probs computed under the run's autocast (as the updates compute theirs: the
    first ratio is 1)."""
    samples = sentiment.sample_completions(policy, tokenizer, prompts, k=cfg.samples_per_prompt,
                                           max_new_tokens=cfg.max_new_tokens, seed=seed,
                                           threads=cfg.threads or 1)
    k = cfg.samples_per_prompt
    prompt_ids = [ids for ids in samples.prompt_ids for _ in range(k)]
    completion_ids = [ids for group in samples.token_ids for ids in group]
    texts = [text for group in samples.texts for text in group]
    ground_truth = torch.tensor(sentiment.sentiment_reward(texts), dtype=torch.float32)  # (N,)
    if scorer is None:
        scores = ground_truth
    else:
        scores = torch.tensor(reward_model.score_texts(scorer, prompt_ids, completion_ids,
                                                       tokenizer.eot_token))
    batch = {key: value.to(run.device) for key, value in
             data.collate_responses(list(zip(prompt_ids, completion_ids)),
                                    tokenizer.eot_token).items()}
    policy.eval()
    with run.autocast():
        old = rollout_logprobs(policy, batch, cfg.impl)  # (N, T)
        ref = rollout_logprobs(reference, batch, cfg.impl)  # (N, T)
    return Rollouts(batch, scores.to(run.device), ground_truth.to(run.device), old, ref)


def ppo_update(run, value_model, value_optimizer, rollouts, kl_coef):
    """--ppo-epochs passes of --minibatches minibatches of PPO's clipped policy and value losses
    over the rollouts. Returns the last minibatch's losses and the mean gradient norm of the
    policy."""
    cfg, batch, mask = run.cfg, rollouts.batch, rollouts.batch["mask"]
    with torch.no_grad(), run.autocast():
        value_model.eval()
        old_values = reward_model.token_values(value_model, batch["input_ids"])  # (N, T)
        rewards = ppo.token_rewards(rollouts.scores, rollouts.old_logprobs, rollouts.ref_logprobs,
                                    mask, kl_coef)
        advantages, returns = ppo.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (N, T) each
        advantages = ppo.whiten(advantages, mask)
    run.model.train()
    value_model.train()
    n = mask.shape[0]
    order_generator = torch.Generator().manual_seed(cfg.seed * EPOCH_SEED_STRIDE + run.step)
    norms = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=order_generator)
        for rows in order.chunk(cfg.minibatches):
            part = {key: value[rows] for key, value in batch.items()}
            with run.autocast():
                logprobs = rollout_logprobs(run.model, part, cfg.impl)  # (n / minibatches, T)
                # (n / minibatches, T)
                values = reward_model.token_values(value_model, part["input_ids"])
            policy_loss = ppo.policy_loss(logprobs, rollouts.old_logprobs[rows], advantages[rows],
                                          part["mask"],
                                          cfg.clip)
            value_loss = ppo.value_loss(values, old_values[rows], returns[rows], part["mask"],
                                        cfg.value_clip)
            norms.append(step(run.model, run.optimizer, policy_loss, cfg.grad_clip))
            step(value_model, value_optimizer, value_loss, cfg.grad_clip)
    return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
            "grad_norm": sum(norms) / len(norms)}


def rloo_update(run, rollouts, kl_coef):
    """One REINFORCE step with the leave-one-out baseline: -mean_i A_i log pi(y_i|x)."""
    cfg, k = run.cfg, run.cfg.samples_per_prompt
    sequence_rewards = rollouts.scores - kl_coef * rollouts.sequence_logratios()  # (N,)
    advantages = ppo.rloo_advantages(sequence_rewards.view(-1, k)).view(-1)  # (N,) prompt-major
    run.model.train()
    with run.autocast():
        # (N,) log pi(y|x)
        logprobs = rollout_logprobs(run.model, rollouts.batch, cfg.impl).sum(dim=1)
    loss = -(advantages * logprobs).mean()
    grad_norm = step(run.model, run.optimizer, loss, cfg.grad_clip)
    return {"policy_loss": loss.item(), "grad_norm": grad_norm}


def step(model, optimizer, loss, grad_clip):
    """Backward, then loop.clip_and_step (clip the global gradient norm, AdamW step); the norm
    before clipping."""
    loss.backward()
    return clip_and_step(model, optimizer, grad_clip, loss=loss.item(), after=" in the RL update")


@torch.no_grad()
def heldout_report(policy, reference, scorer, tokenizer, prompts, cfg):
    """On the held-out prompts, one sample each: ground-truth reward, the reward model's score (when
    there is one) and KL(policy || reference) in nats, each a mean with its 95% half-width."""
    scored = sentiment.score_policy(policy, reference, tokenizer, prompts,
                                    sentiment.sentiment_reward,
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1,
                                    impl=cfg.impl)
    row = {"reward": scored["reward"], "reward_ci95": scored["reward_ci95"], "kl": scored["kl"],
           "kl_ci95": scored["kl_ci95"], "bigram_fluency": scored["bigram_fluency"]}
    if scorer is not None:
        scores = reward_model.score_texts(scorer, scored["prompt_ids"], scored["completion_ids"],
                                          tokenizer.eot_token)
        row["score"], row["score_ci95"] = sentiment.mean_ci95(scores)
    return row


def rl_state(kl_coef, value_model, value_optimizer):
    """What a checkpoint holds beside the policy (run_dir.save's extra): the KL coefficient, and for
    PPO the value model and its AdamW state."""
    if value_model is None:
        return {"kl_coef": kl_coef}
    return {"kl_coef": kl_coef, "value_model": value_model.state_dict(),
            "value_optimizer": value_optimizer.state_dict()}


def resume_rl_state(run, value_model, value_optimizer):
    """Put back what rl_state saved (from run.resumed_extra); returns the KL coefficient.
    CheckpointError for a checkpoint that lacks it."""
    extra = run.resumed_extra
    try:
        if value_model is not None:
            value_model.load_state_dict(extra["value_model"])
            value_optimizer.load_state_dict(extra["value_optimizer"])
        return extra["kl_coef"]
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"--resume {run.path('ckpt.pt')}: no usable value model "
                              f"or KL coefficient in it ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}); start the run "
                              f"again (--overwrite)") from None


def train_rl(command, cfg, policy, scorer, tokenizer, train_prompts, heldout_prompts, log=print):
    """PPO (stage "ppo") or RLOO ("rloo") of `policy` in place for --steps iterations; returns the
    last held-out row. scorer: the reward model (its copy becomes PPO's value model), or None for
    the ground truth."""
    # pi_ref: --init, before any --resume
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    value_model = value_optimizer = None
    # V starts from the reward model (InstructGPT), or from the policy's trunk with a zero head
    if command == "ppo":
        value_model = copy.deepcopy(scorer) if scorer is not None else reward_model.RewardModel(
            copy.deepcopy(policy))
    run = start_run(command, cfg, policy, log)
    reference.to(run.device)
    if value_model is not None:
        value_model.requires_grad_(True).to(run.device)
        value_optimizer = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr,
                                            betas=(0.9, 0.95))
    if scorer is not None:
        scorer.to(run.device).eval().requires_grad_(False)
    controller = (ppo.AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon, MAX_KL_COEF)
                  if cfg.target_kl else None)
    kl_coef, eval_row = cfg.kl_coef, {}
    # --resume: the value model, its AdamW state and the KL coefficient where they were
    if run.step:
        kl_coef = resume_rl_state(run, value_model, value_optimizer)
        if controller is not None:
            controller.kl_coef = kl_coef
    while run.step < cfg.steps:
        indices = example_indices(len(train_prompts), cfg.batch_size, run.step, cfg.seed)
        rollouts = collect_rollouts(run.model, reference, scorer, tokenizer,
                                    [train_prompts[i] for i in indices],
                                    cfg, seed=cfg.seed * STEP_SEED_STRIDE + run.step, run=run)
        if command == "ppo":
            losses = ppo_update(run, value_model, value_optimizer, rollouts, kl_coef)
        else:
            losses = rloo_update(run, rollouts, kl_coef)
        run.step += 1
        kl = rollouts.sequence_logratios().mean().item()
        record(run, {"split": "train", "step": run.step, "kl_coef": kl_coef,
                     "score": rollouts.scores.mean().item(),
                     "ground_truth": rollouts.ground_truth.mean().item(), "kl": kl,
                     "tokens": int(rollouts.batch["mask"].sum()),
                     "objective": rollouts.scores.mean().item() - kl_coef * kl, **losses})
        if controller is not None:
            kl_coef = controller.update(kl, len(rollouts.scores))
        if run.step % cfg.eval_every == 0 or run.step == cfg.steps:
            eval_row = {"split": "eval", "step": run.step,
                        **heldout_report(run.model, reference, scorer, tokenizer, heldout_prompts,
                                         cfg)}
            record(run, eval_row)
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in eval_row.items()))
        if run.step % cfg.save_every == 0 or run.step == cfg.steps:
            save(run, extra=rl_state(kl_coef, value_model, value_optimizer))
    if run.writer is not None:
        run.writer.close()
    return eval_row
