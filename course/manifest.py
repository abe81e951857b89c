"""The course's one source of truth: each assignment's functions to write, its grader, handout and
points.

A stub is (file, qualified name, what to write): `build.py` replaces that function's body with its
docstring and `raise NotImplementedError("Assignment N: <what to write>")`. REMOVED lists the files
of the repository that give solutions away (a naive reference, tests that re-implement a solution,
an answer key); they are not copied. Points: each graded test counts `@pytest.mark.points(n)` points
(1 without the marker).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Assignment:
    number: int
    title: str
    hours: str  # expected student time
    stubs: tuple  # (file, qualified name, what to write)
    grader: str  # path of its graded tests
    handout: str  # path of its handout (copied to handouts/ in the student copy)


ASSIGNMENTS = {
    "A1": Assignment(
        1, "The DPO loss family", "3-4 hours",
        stubs=(("dpo.py", "_losses_from_margin",
                "the per-pair loss of h for sigmoid/cDPO, IPO, hinge and robust"),
               ("dpo.py", "dpo_loss",
                "dpo_loss: checks, pi/ref log-ratios, the loss, detached rewards, RPO"),
               ("dpo.py", "_check_dpo_arguments",
                "the checks of dpo_loss's arguments, errors naming the argument"),
               ("dpo.py", "dpo_metrics", "dpo_metrics: the batch means every DPO run logs"),
               # extra credit (optional; the frontier leaves out the rows of a loss not written yet)
               ("methods/simpo.py", "simpo_loss",
                "(extra credit) SimPO: length-normalised rewards, a target margin"),
               ("methods/orpo.py", "log1mexp",
                "(extra credit) log(1 - e^x), accurate near 0 and far below"),
               ("methods/orpo.py", "orpo_loss",
                "(extra credit) ORPO: the NLL of the chosen response plus the odds-ratio term"),
               ("methods/kto.py", "kto_loss",
                "(extra credit) KTO: each example against the reference point max(kl, 0)")),
        grader="course/graders/test_a1_dpo.py", handout="course/handouts/A1.md"),
    "A2": Assignment(
        2, "Masked log-probs: a chunked backward and a fused Triton kernel", "6-8 hours",
        stubs=(("logprob_kernels/logprobs_torch.py", "TorchTokenLogprobs.backward",
                "the backward of the chunked torch path: g * (onehot - softmax), chunk by chunk"),
               ("logprob_kernels/logprobs_triton.py", "_logprobs_fwd_kernel",
                "the Triton forward kernel: streaming logsumexp over the vocabulary, "
                "the label's logit"),
               ("logprob_kernels/logprobs_triton.py", "_logprobs_bwd_kernel",
                "the Triton backward kernel: g * (onehot - softmax) from the saved statistics"),
               # the same gradient on the path without logits: stubbed so it does not give the
               # answer away
               ("logprob_kernels/linear_logprobs.py", "LinearTokenLogprobs.backward",
                "(optional, ungraded) the backward without logits: recompute each chunk, dz = g * "
                "(onehot - softmax), dhidden = dz @ W, dW += dz.T @ h"),
               ("logprob_kernels/linear_logprobs_triton.py", "_dlogits_kernel",
                "(optional, ungraded) the Triton kernel of dz = g * (onehot - softmax) for a "
                "tile of positions")),
        grader="course/graders/test_a2_kernels.py", handout="course/handouts/A2.md"),
    "A3": Assignment(
        3, "The data path: truncation, collate, concatenated forward", "3-4 hours",
        stubs=(("data/encoding.py", "truncate_pair", "the truncation policy of a too-long pair"),
               ("data/batches.py", "collate_responses",
                "the collate: input_ids, pre-shifted labels, response mask"),
               ("dpo.py", "concatenated_logps",
                "the concatenated forward over chosen and rejected rows")),
        grader="course/graders/test_a3_data.py", handout="course/handouts/A3.md"),
    "A4": Assignment(
        4, "The experiment: the demo, the reward-KL frontier, and what they mean", "4-6 hours",
        stubs=(("experiments/frontier.py", "best_of_n_kl",
                "the exact KL of best-of-n from the reward levels"),),
        grader="course/graders/test_a4_experiment.py", handout="course/handouts/A4.md"),
    "A5": Assignment(
        5, "What DPO replaced: the reward model and PPO", "4-6 hours",
        stubs=(("methods/reward_model.py", "bradley_terry_loss",
                "the Bradley-Terry loss -log sigma(r_w - r_l), finite at any margin, its checks"),
               ("methods/ppo.py", "token_rewards",
                "the per-token rewards: -kl_coef * the log-ratio, and the score at the last "
                "response token"),
               ("methods/ppo.py", "gae",
                "generalised advantage estimation, backwards over the unmasked positions; "
                "returns = advantages + values"),
               ("methods/ppo.py", "whiten", "mean 0 and variance 1 over the positions of the mask"),
               ("methods/ppo.py", "policy_loss",
                "the clipped surrogate of PPO, averaged over the response tokens"),
               ("methods/ppo.py", "value_loss",
                "the clipped value loss of PPO, averaged over the response tokens"),
               ("methods/ppo.py", "rloo_advantages",
                "each sample minus the mean of the other k - 1 samples of its prompt")),
        grader="course/graders/test_a5_rlhf.py", handout="course/handouts/A5.md"),
}

# Files that give solutions away: the naive float references of the DPO losses and of SimPO, ORPO
# and KTO and the tests built on them, the tests that check the data path against a
# re-implementation, those that check PPO's math against naive loops, the instructor's scripts (the
# fixtures' writer, A5's wrong-but-plausible solutions) and A5's answer key. The graders replace
# the tests.
REMOVED = ("tests/naive_dpo.py", "tests/test_dpo.py", "tests/naive_family.py",
           "tests/test_family.py", "tests/test_data_batches.py", "tests/test_ppo.py",
           "course/make_fixtures.py", "course/mutants.py", "course/handouts/A5_answer_key.md")

# Written into the student copy as answers/AN.md: the answer sheets of the written questions.
ANSWERS = {"A4": "course/handouts/A4_answers.md", "A5": "course/handouts/A5_answers.md"}
