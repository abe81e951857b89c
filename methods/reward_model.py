"""The reward model of RLHF, the stage DPO removes: r_phi(x, y) fitted to preferences under
Bradley-Terry.

RLHF (the DPO paper's section 3) first fits a reward model to the preference pairs by maximum
likelihood under the Bradley-Terry model (Eq. 1):

    p(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l))
    L_R(r_phi) = -E_(x, y_w, y_l) [ log sigma(r_phi(x, y_w) - r_phi(x, y_l)) ]
    (Eq. 2)

then maximises that reward with reinforcement learning under a KL penalty (Eq. 3; methods/ppo.py).
DPO fits the same Bradley-Terry likelihood with the implicit reward beta log pi/pi_ref instead, and
needs neither this model nor the reinforcement learning.

r_phi here is the GPT (or Llama) trunk initialised from the same model as the policy (the paper's
pi_SFT; InstructGPT does the same) with a scalar head read at the last token of prompt + response,
its EOS: the one position whose hidden state has seen the whole response. The head starts at zero,
so every score starts at 0 and the loss at log 2, as DPO's does. It trains on exactly the pairs DPO
trains on (`python train.py reward-model`).

Worked example: scores r_w = 1.5 and r_l = 0.5 give -log sigma(1) = log(1 + e^-1) = 0.3132617, and
d loss / d r_w = -sigma(-1) = -0.2689414 (tests/test_reward_model.py asserts both).
Left out: a Hugging Face export of the reward model (its checkpoint is ours), ensembles, margins in
the loss.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import dpo
from plumbing.checkpoint import LANGUAGE_MODEL, CheckpointError, load_checkpoint, model_from_state
from tensor_checks import check_logps

KIND = "reward model"  # what a checkpoint of this module says it holds (checkpoint.save_checkpoint)


def bradley_terry_loss(chosen_rewards: torch.Tensor,
                       rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair -log sigma(r_w - r_l) (Eq. 2), (B,) float32; finite with finite gradients for any
    margin (logsigmoid never forms exp(+large)). chosen_rewards, rejected_rewards: (B,) float, one
    shape and dtype (tensor_checks.check_logps: ValueError, TypeError otherwise)."""
    check_logps({"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards})
    return -F.logsigmoid(chosen_rewards.float() - rejected_rewards.float())  # (B,)


class RewardModel(nn.Module):
    """r_phi(x, y): a GPT or Llama trunk and a linear head on the hidden state of the last token of
    prompt + response."""

    KIND = KIND

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        # zero at the start: every score 0, the loss log 2
        self.head = nn.Linear(trunk.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def config(self):
        """The trunk's GPTConfig or LlamaConfig."""
        return self.trunk.config

    def forward(self, input_ids: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """Scores (N,) float32 of right-padded rows input_ids (N, T) int64, read at positions
        last_index (N,)."""
        hidden = self.trunk.hidden_states(input_ids)  # (N, T, d)
        last = hidden[torch.arange(len(input_ids), device=input_ids.device), last_index]  # (N, d)
        return self.head(last).squeeze(-1).float()  # (N,)


def token_values(model: "RewardModel", input_ids: torch.Tensor) -> torch.Tensor:
    """The head read at every position: (N, T) float32 for input_ids (N, T) int64. PPO's value model
    is a RewardModel used this way (methods/ppo.py): V(s_t) estimates the return from position t
    on."""
    return model.head(model.trunk.hidden_states(input_ids)).squeeze(-1).float()  # (N, T)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Where each row's last token stands: one past the last True of a collate mask, which marks the
    positions whose label is a response token (the last response token is the label of the last
    masked position). mask (N, T) bool, at least one True per row -> (N,) int64."""
    return data.last_masked_position(mask) + 1  # (N,)


def batch_scores(model: RewardModel, batch: dict) -> torch.Tensor:
    """r_phi of every row of a data.collate_responses / dpo_collate batch: (N,) float32."""
    return model(batch["input_ids"], last_token_index(batch["mask"]))


def batch_loss(model: RewardModel, batch: dict) -> tuple[torch.Tensor, dict]:
    """Eq. 2 on a data.dpo_collate batch (B chosen rows, then B rejected rows): the loss summed over
    its pairs, and per pair {"loss", "rewards/chosen", "rewards/rejected"} ((B,) detached)."""
    scores = batch_scores(model, batch)  # (2B,)
    B = scores.shape[0] // 2
    chosen, rejected = scores[:B], scores[B:]  # (B,), (B,)
    losses = bradley_terry_loss(chosen, rejected)  # (B,)
    per_example = {"loss": losses.detach(), "rewards/chosen": chosen.detach(),
                   "rewards/rejected": rejected.detach()}
    return losses.sum(), per_example


def metrics(per_example: dict) -> dict[str, float]:
    """Means of batch_loss's per-pair values, and the pairwise accuracy (chosen scored strictly
    higher) and margin under the names DPO's metrics use, so that the best held-out accuracy picks
    best.pt as for DPO."""
    chosen, rejected = per_example["rewards/chosen"], per_example["rewards/rejected"]
    return {"loss": per_example["loss"].mean().item(), "rewards/chosen": chosen.mean().item(),
            "rewards/rejected": rejected.mean().item(),
            "rewards/accuracies": (chosen > rejected).float().mean().item(),
            "rewards/margins": (chosen - rejected).mean().item()}


@torch.no_grad()
def score_texts(model: RewardModel, prompt_ids, completion_ids, pad_id: int,
                batch_size: int = 64) -> list[float]:
    """r_phi of completions: prompt_ids, completion_ids lists of N token-id lists (each non-empty, a
    completion ending in EOS as in training) -> N floats. Batches on the model's device, in eval
    mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for batch in data.response_batches(prompt_ids, completion_ids, pad_id, batch_size):
        scores += batch_scores(model,
                               {key: value.to(device) for key, value in batch.items()}).tolist()
    model.train(was_training)
    return scores


def load_reward_model(path, map_location="cpu"):
    """The reward_model.RewardModel saved at `path` (a ckpt.pt, a best.pt, or a directory holding a
    ckpt.pt). Raises CheckpointError when the file is not one (a language model's checkpoint,
    say)."""
    state = load_checkpoint(path, map_location)
    if state.get("kind", LANGUAGE_MODEL) != KIND:
        raise CheckpointError(f"{path}: not a reward model (it holds a "
                              f"{state.get('kind', LANGUAGE_MODEL)}); train one with `python "
                              f"train.py reward-model`")
    try:
        model = RewardModel(model_from_state(state, path))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config: "
                              f"{' '.join(str(e).split())[:300]}") from None
    return model


def objective(*, pad_id: int) -> dpo.Objective:
    """The reward model as the loop trains it: batch_loss (Eq. 2) on data.dpo_collate batches
    (padded with `pad_id`), summed over pairs, logging `metrics`."""
    return dpo.Objective("reward-model", batch_loss, dpo.pairs_in, metrics,
                         functools.partial(data.dpo_collate, pad_id=pad_id))
